"""Training data: the sources (mnist5k, digits, folder, torchvision, Ray Data streams) and per-worker shards.
May import orchestrator.spec only; knows nothing of MLflow."""
