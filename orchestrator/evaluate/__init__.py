"""Sample quality and stability: the cached domain classifier, the Evaluator (FID, KID, IS, PRDC, coverage), Inception
weights, the stability monitor. May import orchestrator.data, .distributed and .spec; neither Ray nor MLflow."""
