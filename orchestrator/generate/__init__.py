"""Using a trained generator: `ganorch eval` (scoring a checkpoint's G_ema, logged to a run of its own).
May import orchestrator.train and the layers below it; not its siblings .cluster and .tune."""
