"""MLflow and the terminal: where results go, a run's lifecycle, rank 0's logging through an outage-proof outbox, tags,
redaction, and the progress line. May import orchestrator.distributed and .spec; not its sibling .data."""
