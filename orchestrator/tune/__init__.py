"""Ray Tune sweeps: the trials (a TorchTrainer each), ASHA and PBT, the live trial table, the stability map.
May import orchestrator.train and the layers below it; not its siblings .cluster and .generate."""
