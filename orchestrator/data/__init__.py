"""Training data: the sources (mnist5k, digits, folder, torchvision, Ray Data streams) and per-worker shards.
May import orchestrator.distributed and .spec; not its sibling .track (data knows nothing of MLflow)."""
