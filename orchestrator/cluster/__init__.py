"""Jobs on a Ray cluster through its job server: reaching it, what a job takes along, submit/status/logs/stop/list.
May import orchestrator.track and orchestrator.spec; it starts no training itself."""
