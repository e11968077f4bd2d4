"""Every tag ganorch sets on an MLflow run, in one place: people filter runs by them, and code reads them back."""

TAG_JOB = "ganorch.job"
TAG_CHECKPOINT = "ganorch.checkpoint"            # artifact path of the latest checkpoint in the run
TAG_RAY_CHECKPOINT = "ganorch.ray_checkpoint"    # the final checkpoint in Ray Train's storage (a path or URI)
TAG_STORAGE = "ganorch.storage"                  # where Ray Train keeps the run's checkpoints: storage_path/run name
TAG_DATA_SKIPPED = "ganorch.data_skipped"        # how many images could not be decoded (listed in data/)
TAG_CLASSIFIER = "ganorch.classifier"            # the cached domain classifier behind the eval metrics
TAG_CLASSIFIER_ACCURACY = "ganorch.classifier_accuracy"  # its accuracy on its held-out share of the data
TAG_INCEPTION = "ganorch.inception"              # whether Inception features are used: "on: <weights>" or "off: <why>"
TAG_COLLAPSE_YARDSTICK = "ganorch.collapse_yardstick"  # held-out real images recall is judged by, or "none: <why>"
TAG_BEST_CHECKPOINT = "ganorch.best_checkpoint"  # artifact path of the checkpoint with the lowest FID so far
TAG_BEST_FID = "ganorch.best_fid"                # that FID, and the step it was reached at:
TAG_BEST_STEP = "ganorch.best_step"
TAG_UNSTABLE = "ganorch.unstable."               # + flag name: "<flag> at step N: <reason>"
TAG_OUTCOME = "ganorch.outcome"                  # "completed", or "stopped: <flag> at step N: <reason>"
TAG_EVALUATED = "ganorch.evaluated"              # an eval run: the checkpoint it scored
TAG_TRAIN_RUN = "ganorch.train_run"              # the Ray Train run's name (= the submission id of a submitted job)
TAG_RESTARTS = "ganorch.restarts"                # how many times the run was restarted (workers that failed,
                                                 # a resubmitted job, a Tune trial)
TAG_RESTART = "ganorch.restart."                 # + n: what restart n continued from
TAG_RESIZES = "ganorch.resizes"                  # how many times an elastic group restarted at another size
TAG_RESIZE = "ganorch.resize."                   # + n: when, from what size to what, why, and from which step
TAG_RESUMED_FROM = "ganorch.resumed_from"        # the checkpoint the latest start of the workers continued from
TAG_PASSED_OVER = "ganorch.passed_over"          # corrupted checkpoints a start of the workers passed over, and why
TAG_WORKERS = "ganorch.workers"                  # where each rank ran: "rank 0: node ... (host, device); ..."
TAG_REGISTERED = "ganorch.registered"          # the registered model version made of the run's (a sweep's: its best
                                                 # trial's) generator: "NAME version N"
BEST_CHECKPOINT_DIR = "checkpoints/best"
LABELLED_INDICES = "data/labelled_indices.json"  # data.labels_per_class: the indices of the images G trained on

# MLflow's own: the experiment's kind picks the UI's view of it (model training, not GenAI), and a run's description.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
TAG_DESCRIPTION = "mlflow.note.content"

# A sweep's runs (orchestrator.tune).
TAG_SWEEP = "ganorch.sweep"                 # on the parent run: the search space, as YAML
TAG_TRIAL = "ganorch.trial"                 # on a child run: its Tune trial id
TAG_BEST_TRIAL = "ganorch.best_trial"       # on the parent: the best trial's child run id; on that child: "true"
