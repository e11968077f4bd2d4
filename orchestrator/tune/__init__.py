"""Ray Tune sweeps: the trials (a TorchTrainer each), ASHA and PBT, the live trial table, the stability map.
May import orchestrator.train and everything below it."""
