"""Training: a Ray Train run from a spec (launch), the per-worker loop, the D/G phases, precision, checkpoints and
resuming from them. May import orchestrator.evaluate, .data, .track, .distributed and .spec."""
