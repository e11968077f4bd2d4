"""torch.distributed helpers: ranks, agreed decisions, gathers, stats reduced once per interval, DDP wrapping and the
rank-consistency check. Imports nothing else of ganorch, and neither Ray nor MLflow."""
