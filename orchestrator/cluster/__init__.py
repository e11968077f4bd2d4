"""Jobs on a Ray cluster through its job server: reaching it, what a job takes along, submit/status/logs/stop/list.
May import orchestrator.train and the layers below it; not its siblings .tune and .generate."""
