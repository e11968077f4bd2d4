"""`ganorch` command line. Specs are validated before Ray or MLflow is imported, let alone started."""

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from orchestrator.cluster.client import DEFAULT_ADDRESS
from orchestrator.spec import JobSpec, SpecError, load

EXIT_USAGE = 2
EXIT_STOPPED = 3  # the run ended early on a train.stop_on flag
MAX_GRID_SAMPLES = 1024  # as tracking.num_samples


def add_job_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job spec YAML, e.g. jobs/quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec key, e.g. --set train.steps=100 (repeatable; VALUE is read as YAML)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganorch", description="Distributed GAN training on Ray, tracked in MLflow.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    validate = commands.add_parser("validate", help="check a job spec and print it resolved")
    add_job_args(validate)
    run = commands.add_parser("run", help="train a job on Ray Train (local Ray, or the cluster at RAY_ADDRESS)")
    add_job_args(run)
    run.add_argument("--dry-run", action="store_true", help="check what a run checks before it starts, print the "
                     "resolved spec and the resources it would take, then exit")
    run.add_argument("--run-name", metavar="NAME",
                     help="the Ray Train run's name (default: <job name>-<time>); a run of that name that ended "
                          "early continues from its latest checkpoint, in the same MLflow run")
    run.add_argument("--resume", metavar="auto|PATH|RUN_ID",
                     help="continue from a checkpoint (networks, EMA, optimizers, step, data position, RNG): a "
                          "file or a directory holding checkpoint.pt (in a new MLflow run), an MLflow run id (that "
                          "run goes on from its latest checkpoint), or auto: this job's latest run with a "
                          "checkpoint, if any")
    sweep = commands.add_parser("tune", help="run the job's Ray Tune sweep (its `tune` section)")
    add_job_args(sweep)
    sweep.add_argument("--dry-run", action="store_true", help="print the resolved spec, the search space and how many trials run at once, then exit")
    sweep.add_argument("--export", metavar="YAML", help="also write the best trial's job spec here")
    evaluate = commands.add_parser("eval", help="score a checkpoint's G_ema (fid, kid, is, coverage, ...) and log it to MLflow")
    evaluate.add_argument("target", metavar="CHECKPOINT|RUN_ID",
                          help="a checkpoint file (or a directory holding checkpoint.pt), or an MLflow run id")
    evaluate.add_argument("--best", action="store_true", help="with a run id: its best checkpoint by FID, not its latest")
    evaluate.add_argument("--samples", type=int, default=0, metavar="N", help="also write a grid of N samples")
    evaluate.add_argument("--output", metavar="PNG", help="where the grid goes (default: eval_step_NNNNNN.png here)")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                          help="override a key of the checkpoint's spec, e.g. --set eval.num_samples=5000 or "
                               "--set data.path=/data/here (repeatable)")
    sample = commands.add_parser("sample", help="draw images from a trained generator: a grid and/or a PNG each")
    add_draw_args(sample)
    sample.add_argument("--grid", metavar="PNG", help="write the images as one grid (a row per class when "
                                                       "conditional)")
    sample.add_argument("--out", metavar="DIR", help="write one PNG per image into DIR (new or empty)")
    export = commands.add_parser("export", help="write a labelled synthetic dataset from a trained generator: "
                                                "class folders of PNGs, or one .npz, with a manifest.json")
    add_draw_args(export, num_required=True)
    export.add_argument("--out", metavar="DIR|FILE.npz", required=True,
                        help="a new (or empty) folder: one subfolder of PNGs per class, read by torchvision's "
                             "ImageFolder and data.source folder; or FILE.npz: images uint8 (N, H, W, C) and labels")
    augment = commands.add_parser("augment-eval", help="measure what a conditional generator's samples add to a "
                                  "classifier with K labelled images per class; logged as a run nested under the "
                                  "generator's")
    augment.add_argument("source", metavar="SOURCE", help="a conditional generator, named as for ganorch sample: "
                         "an MLflow model URI, an MLflow run id, or a checkpoint file")
    augment.add_argument("--labels-per-class", type=int, metavar="K", help="real labelled images per class the "
                         "classifier gets (default: the generator's data.labels_per_class, the same images)")
    augment.add_argument("--synthetic-per-class", type=int, default=500, metavar="M",
                         help="generated images per class added to them (default 500)")
    augment.add_argument("--real-fraction", type=float, metavar="F", help="the real images' share of every batch "
                         "(default: in proportion to the counts, K / (K + M))")
    augment.add_argument("--seeds", type=int, default=3, metavar="N", help="classifiers trained per arm, each with "
                         "its own seed and samples (default 3): the spread of the accuracy")
    augment.add_argument("--steps", type=int, default=1000, metavar="S",
                         help="training steps of every classifier, batch 64 (default 1000)")
    augment.add_argument("--truncation", type=float, metavar="PSI", help="draw the samples' z truncated to "
                         "[-PSI, PSI]")
    augment.add_argument("--device", metavar="DEVICE", help="cpu, cuda, ... (default: cuda when there is one)")
    augment.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a key of the generator's spec, e.g. --set data.path=/data/here")
    sync = commands.add_parser("sync", help="send to MLflow what runs kept on this machine while it could not be "
                                            "reached (MLFLOW_TRACKING_URI)")
    sync.add_argument("folders", nargs="*", metavar="FOLDER",
                      help="a folder a run named (default: every one under ~/.ganorch/unsent)")
    add_job_commands(commands)
    return parser


def add_draw_args(parser: argparse.ArgumentParser, num_required: bool = False) -> None:
    """`sample` and `export`: which generator, how many images, from which latents, on which device."""
    parser.add_argument("source", metavar="SOURCE",
                        help="a generator: an MLflow model URI (runs:/RUN_ID/generator, models:/MODEL_ID, "
                             "models:/NAME@best, models:/NAME/latest), an MLflow run id (its generator), or a "
                             "checkpoint file (or a directory holding checkpoint.pt)")
    parser.add_argument("--num", type=int, required=num_required, default=None if num_required else 64,
                        metavar="N", help="how many images" + ("" if num_required else " (default 64)")
                        + "; shared evenly over the classes of a conditional generator")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="the latents' seed (default 0): the same "
                        "seed and generator give the same images")
    parser.add_argument("--classes", metavar="K,K,...", help="conditional generators: only these classes "
                        "(default: all)")
    parser.add_argument("--truncation", type=float, metavar="PSI", help="draw z from a normal truncated to "
                        "[-PSI, PSI] (the truncation trick: more typical, less varied images)")
    parser.add_argument("--device", metavar="DEVICE", help="cpu, cuda, cuda:1, ... (default: cuda when there is "
                        "one, else cpu)")


def add_job_commands(commands: Any) -> None:
    """submit, status, logs, stop, list: jobs on a Ray cluster, through its job server."""
    def with_address(name: str, help: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help)
        parser.add_argument("--address", metavar="URL",
                            help="Ray's job server, e.g. http://HOST:8265 (default: RAY_API_SERVER_ADDRESS, an "
                                 f"http RAY_ADDRESS, else {DEFAULT_ADDRESS}); the token comes from RAY_AUTH_TOKEN, "
                                 "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token")
        return parser

    submit = with_address("submit", "send a job to a Ray cluster's job server; prints its id and returns")
    add_job_args(submit)
    submit.add_argument("--id", dest="job_id", metavar="ID",
                        help="the job's id, which also names its Ray Train run (default: <job name>-<time>); the id "
                             "of a job that was stopped or failed continues it from its latest checkpoint (Ray "
                             "job ID--attempt-2, ...)")
    for name, help in (("status", "a submitted job's status"), ("stop", "stop a submitted job (its MLflow run ends "
                                                                        "KILLED) and wait until it has")):
        with_address(name, help).add_argument("job_id", metavar="ID")
    logs = with_address("logs", "a submitted job's output")
    logs.add_argument("job_id", metavar="ID")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="go on printing until the job ends; exit 1 unless it SUCCEEDED")
    with_address("list", "the jobs submitted to the cluster")


def dry_run_report(spec: JobSpec) -> str:
    from orchestrator.track.store import tracking_uri
    from orchestrator.train.ray_init import ray_target
    from orchestrator.train.trainer import resources_line

    lines = [
        "# resolved job spec",
        spec.to_yaml().rstrip(),
        "",
        f"# would run on {ray_target()}",
        f"# resources: {resources_line(spec)}" + (" per trial" if spec.tune else ""),
        f"# MLflow: experiment {spec.experiment!r} at {tracking_uri()}",
    ]
    if spec.tune:
        lines.append(f"# sweep: {sweep_line(spec)}")
    lines.append("# not checked without starting Ray: its free CPUs and GPUs for the workers"
                 + (" and Ray Data's tasks" if spec.data.source == "ray-data" else "")
                 + ", that a local tracking store is on the cluster's only host, and that MLflow can use an SQLite "
                 "store (here it is only opened as a database)")
    return "\n".join(lines)


def sweep_line(spec: JobSpec) -> str:
    """How many trials the sweep runs, and how many at once on the cluster this machine sees."""
    from orchestrator.spec import search_space
    from orchestrator.tune.schedulers import concurrent_trials

    if os.environ.get("RAY_ADDRESS"):
        import ray

        ray.init(logging_level="ERROR", log_to_driver=False)
        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    else:  # what a local Ray instance would have
        import torch

        cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    dimensions, _ = search_space.parse_dimensions(spec.tune.space)
    grid = search_space.num_grid_points(dimensions) if spec.tune.searcher != "grid" else \
        search_space.num_grid_points([d if d.kind == "grid" else search_space.Dimension(d.key, "grid", d.values)
                                      for d in dimensions])
    line = (f"{grid * spec.tune.num_samples} trials ({spec.tune.searcher} search, {spec.tune.scheduler} scheduler); "
            f"{concurrent_trials(spec, cpus, gpus)} at once on {cpus:g} CPUs, {gpus:g} GPUs")
    if spec.tune.scheduler == "pbt":
        perturbed = [d.key for d in dimensions if search_space.perturbable(d.key)]
        line += (f"; PBT perturbs {', '.join(perturbed)} every "
                 f"{spec.tune.perturbation_interval or spec.tracking.checkpoint_every} steps")
    return line


def main(argv: list[str] | None = None) -> int:
    from orchestrator.track.redact import redacted_output

    with redacted_output():
        return run_command(build_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    # Like `python -m`: modules in the working directory (model.generator: mynets:G) can be imported.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if args.command == "eval":
        return evaluate_checkpoint(args)
    if args.command == "sync":
        return sync_unsent(args.folders)
    if args.command in ("sample", "export"):
        return generate_images(args)
    if args.command == "augment-eval":
        return augment_eval(args)
    if args.command in ("status", "logs", "stop", "list"):
        return manage_job(args)
    if args.command in ("run", "tune"):
        from orchestrator.cluster.environment import adopt_submitted_environment
        from orchestrator.train.ray_init import keep_local

        adopt_submitted_environment()
        keep_local()
    try:
        spec = load(args.job, args.overrides)
    except SpecError as err:
        print(f"ganorch: invalid job spec {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "validate":
        print(f"{args.job}: valid")
        print(spec.to_yaml(), end="")
        return 0
    if args.command == "submit":
        return submit_job(args, spec)
    if args.command == "tune" and spec.tune is None:
        print(f"ganorch: {args.job} has no tune section; see docs/tune.md, or use ganorch run",
              file=sys.stderr)
        return EXIT_USAGE
    from orchestrator.train.ray_init import RayStartError

    try:
        resume = pre_start_checks(args, spec, start_ray=not args.dry_run)
    except ValueError as err:
        print(f"ganorch: cannot run {args.job}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\nganorch: interrupted before the run started", file=sys.stderr)
        return 130
    except RayStartError as err:
        print(f"ganorch: cannot run {args.job}: {err}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(dry_run_report(spec))
        return 0
    if spec.tune is not None:
        return run_sweep(spec, getattr(args, "export", None))
    return run_job(spec, args.run_name, resume, command_line(args))


def pre_start_checks(args: argparse.Namespace, spec: JobSpec, start_ray: bool = False) -> Any:
    """What `run` and `tune` check before a run starts, --dry-run too; ValueError for the first that fails. First,
    without torch or Ray: --export, the tracking store (MLflow opens it only when it is neither SQLite nor a
    server), a local data folder's existence. Then the data and networks and --resume's checkpoint (returned),
    which import torch: with `start_ray`, on a thread while Ray starts, followed by MLflow opening the store
    (ray_init.start_ray_beside); what they find is printed here, on the main thread, whose output is redacted."""
    from orchestrator.data.paths import check_local_path
    from orchestrator.track import store

    uri = store.tracking_uri()
    check_output_file("--export", getattr(args, "export", None))
    store.check_before_start(uri)
    check_local_path(spec.data)

    def thorough() -> tuple[list[str], Any]:
        data = check_data_and_models(spec)
        found, line = resumption(getattr(args, "resume", None), spec)
        return [f"data: {data}", *([line] if line else [])], found

    if start_ray:
        from orchestrator.train.ray_init import open_store, start_ray_beside

        def thorough_then_store() -> tuple[list[str], Any]:
            checked = thorough()
            open_store(uri)
            return checked

        lines, found = start_ray_beside(thorough_then_store, cut_short=True)
    else:
        lines, found = thorough()
    print("\n".join(lines))
    return found


def command_line(args: argparse.Namespace) -> str:
    """`ganorch run JOB` with the --set overrides it was given: the spec that a resume must run again."""
    import shlex

    return shlex.join(["ganorch", "run", args.job, *(arg for o in args.overrides for arg in ("--set", o))])


def failure_line(err: Any, spec: JobSpec, command: str | None) -> str:
    """The last line of a failed run: what failed, after which step, and what to do."""
    when = f"after step {err.step}" if err.step else "before its first step"
    command = command or "ganorch run <job.yaml>"
    again = (f"continue from its latest checkpoint (step {err.checkpoint_step}): {command} --resume {err.run_id}"
             if err.checkpoint_step else f"run it again (it has no checkpoint): {command}")
    if err.trace:
        todo = f"fix the error above, then {again}"
    elif err.restarts:
        todo = f"{again}; the workers were restarted {err.restarts} time(s) (resources.max_failures: " \
               f"{spec.resources.max_failures})"
    else:
        todo = f"{again}; resources.max_failures restarts the workers on their own"
    return (f"ganorch: training failed {when}: {err.what}. To go on, {todo} (Ray's own report: its logs, in "
            f"{ray_logs()} on this machine)")


def ray_logs() -> str:
    """Where this machine's Ray keeps its logs."""
    try:
        import ray._private.worker

        return f"{ray._private.worker._global_node.get_logs_dir_path()}"
    except Exception:
        return "the Ray session's logs folder, /tmp/ray/session_latest/logs"


def resumption(flag: str | None, spec: JobSpec) -> tuple[Any, str | None]:
    """--resume's checkpoint, checked against the spec (None without --resume, or auto with nothing to resume),
    and the line that says what it continues from."""
    if flag is None:
        return None, None
    from orchestrator.track import store
    from orchestrator.train import resume_from

    found = resume_from.find(flag, spec, store.tracking_uri())
    if found is None:
        return None, (f"--resume auto: no earlier run of job {spec.name} with a checkpoint in experiment "
                      f"{spec.experiment}; starting afresh")
    return found, (f"resuming from step {found.state['step']}: {found.origin}"
                   + (f" (MLflow run {found.run_id} goes on)" if found.run_id else ""))


def submit_job(args: argparse.Namespace, spec: JobSpec) -> int:
    """The spec is valid (checked before this); the cluster is reached and lets us in before anything is sent."""
    from orchestrator.cluster import client as cluster
    from orchestrator.cluster import environment, jobs
    from orchestrator.track.runs import default_run_name

    address = cluster.address_of(args.address)
    try:
        client = cluster.connect(address)
        sent = jobs.submit(client, args.job, args.overrides, args.job_id or default_run_name(spec))
    except ValueError as err:
        print(f"ganorch: cannot submit {args.job}: {err}", file=sys.stderr)
        return EXIT_USAGE
    environment.warn_local_tracking()
    if sent.resubmitted:
        print(f"resubmitted {sent.job_id} (it had {sent.resubmitted}) as Ray job {sent.ray_id}: its Ray Train run "
              "continues from its latest checkpoint, in the same MLflow run")
    print(f"submitted to {address}: {sent.entrypoint}")
    print(f"  ganorch status {sent.job_id}   ganorch logs {sent.job_id} --follow   ganorch stop {sent.job_id}")
    print(sent.job_id)
    return 0


def manage_job(args: argparse.Namespace) -> int:
    from orchestrator.cluster import client as cluster
    from orchestrator.cluster import jobs

    address = cluster.address_of(args.address)
    try:
        client = cluster.connect(address)
        if args.command == "list":
            print(jobs.listing(client))
        elif args.command == "status":
            print(jobs.describe(client, args.job_id))
        elif args.command == "logs":
            ended = jobs.logs(client, args.job_id, args.follow)
            if args.follow and ended != "SUCCEEDED":  # `submit ... && logs ID --follow` fails with its job
                return 1
        else:
            print(f"job {args.job_id}: {jobs.stop(client, args.job_id)}")
    except ValueError as err:
        print(f"ganorch: {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # logs --follow: the job goes on
        return 130
    return 0


def evaluate_checkpoint(args: argparse.Namespace) -> int:
    from orchestrator.generate import offline_eval
    from orchestrator.track import runs
    from orchestrator.track.store import tracking_uri
    from orchestrator.train import locate

    if not 0 <= args.samples <= MAX_GRID_SAMPLES:
        print(f"ganorch: --samples: got {args.samples}; must be between 0 and {MAX_GRID_SAMPLES}", file=sys.stderr)
        return EXIT_USAGE
    uri = tracking_uri()
    try:
        check_output_file("--output", args.output)
        source = locate.resolve(args.target, args.best, uri)
        spec = offline_eval.checkpoint_spec(source.state, args.overrides, source.description)
        check_inception(spec)
        result = offline_eval.evaluate(source, spec, uri, args.samples, Path(args.output) if args.output else None)
    except SpecError as err:
        print(f"ganorch: invalid spec in checkpoint {err}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as err:
        print(f"ganorch: cannot evaluate {args.target}: {err}", file=sys.stderr)
        return EXIT_USAGE
    print(f"{source.description}: step {result.step}, {spec.eval.num_samples} samples "
          f"(classifier accuracy {result.classifier_accuracy:.3f}; Inception features {result.inception})")
    for name, value in result.scores.items():
        print(f"  {name:18s} {value:.4f}")
    if result.grid_path:
        print(f"sample grid: {result.grid_path}")
    print(f"MLflow run {result.run_id}; {runs.ui_hint(uri, result.run_id)}")
    return 0


def augment_eval(args: argparse.Namespace) -> int:
    import torch

    from gan_models.conditioning import ramp
    from orchestrator.generate import augment_eval, generator_source, offline_eval
    from orchestrator.track import runs
    from orchestrator.track.store import tracking_uri

    settings = augment_eval.Settings(args.labels_per_class, args.synthetic_per_class, args.real_fraction, args.seeds,
                                     args.steps, args.truncation)
    uri = tracking_uri()
    try:
        settings.check()
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        G = generator_source.resolve(args.source, uri, device)
        if G.spec is None:
            raise ValueError(f"{G.source}: the model holds no job spec (logged before ganorch kept one), so its data "
                             "is unknown")
        spec = offline_eval.checkpoint_spec({"spec": G.spec}, args.overrides, G.source)
        gan_k = spec.data.labels_per_class
        if gan_k is None and settings.labels_per_class:
            print("note: the generator trained on every image, the held-out ones the classifiers are scored on "
                  "included: what its samples add is measured on images it saw")
        elif gan_k and settings.labels_per_class and gan_k > settings.labels_per_class:
            print(f"note: the generator trained on {gan_k} labelled images per class, more than the classifier's "
                  f"{settings.labels_per_class}: what its samples add includes labels the classifier was not given")
        if spec.train.condition_ramp and ramp(G.step, *spec.train.condition_ramp) < 1:
            print(f"note: step {G.step} is inside train.condition_ramp {spec.train.condition_ramp}: its samples "
                  "follow their labels only in part")
        out = augment_eval.evaluate(G, spec, settings, device, augment_eval.trained_indices(G, uri))
    except SpecError as err:
        print(f"ganorch: augment-eval: invalid spec in {err}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as err:
        print(f"ganorch: augment-eval: {err}", file=sys.stderr)
        return EXIT_USAGE
    metrics = out.metrics()
    print(f"{G.source} (step {G.step}): {out.labels_per_class} real images per class"
          f"{'' if settings.real_fraction is None else f' ({settings.real_fraction:.0%} of each batch)'}, "
          f"+ {settings.synthetic_per_class} synthetic; {settings.seeds} seeds (the same real images, each its own "
          f"classifier seed and samples), scored on {out.held_out} held-out real images ({out.seconds:.0f} s)")
    print(f"  real only        {metrics['real_only_accuracy_mean']:.4f} +- {metrics['real_only_accuracy_std']:.4f}")
    print(f"  real + synthetic {metrics['augmented_accuracy_mean']:.4f} +- {metrics['augmented_accuracy_std']:.4f}"
          f"   ({metrics['accuracy_gain']:+.4f})")
    try:
        augment_eval.log(out, G, spec, settings, uri)
    except Exception as err:
        print(f"ganorch: augment-eval: the numbers above could not be logged to MLflow at {uri}: "
              f"{str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__}", file=sys.stderr)
        return 1
    where = f"nested under {out.parent_run_id}" if out.parent_run_id else \
        f"(not nested: {args.source} names no MLflow run in this store; a run id or a model URI does)"
    print(f"MLflow run {out.run_id} {where}; {runs.ui_hint(uri, out.run_id)}")
    return 0


def generate_images(args: argparse.Namespace) -> int:
    """`sample` and `export`: everything is checked before the generator is loaded, and nothing is overwritten."""
    import torch

    from orchestrator.generate import dataset, generator_source, samples
    from orchestrator.track.store import tracking_uri

    try:
        if args.num < 1:
            raise ValueError(f"--num: got {args.num}; at least 1 image")
        if args.truncation is not None and not args.truncation > 0:
            raise ValueError(f"--truncation: got {args.truncation}; a positive PSI (e.g. 0.7)")
        try:
            device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as err:
            raise ValueError(f"--device: {args.device!r} cannot be used here ({str(err).splitlines()[0]})") from None
        if args.command == "sample":
            if args.grid is None and args.out is None:
                raise ValueError("say where the images go: --grid PNG and/or --out DIR")
            grid_path, out_dir = (Path(p).expanduser() if p else None for p in (args.grid, args.out))
            samples.check_new(grid_path, out_dir)
        else:
            out = Path(args.out).expanduser()
            dataset.check_new(out)
        G = generator_source.resolve(args.source, tracking_uri(), device)
        classes = samples.parse_classes(args.classes, G)
        if args.command == "export" and len(classes) > args.num:
            raise ValueError(f"--num: {args.num} images cannot fill {len(classes)} classes; at least one each")
    except ValueError as err:
        print(f"ganorch: {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE
    what = f"{G.source} (step {G.step})"
    if args.command == "sample":
        written = samples.write_samples(G, args.num, classes, args.seed, args.truncation, device, grid_path, out_dir)
        print(f"{args.num} images from {what}: " + (f"grid {grid_path}" if grid_path else "")
              + (", " if grid_path and out_dir else "") + (f"{len(written) - bool(grid_path)} PNGs in {out_dir}"
                                                            if out_dir else ""))
        return 0
    manifest = dataset.export(G, args.num, classes, args.seed, args.truncation, device, out,
                              show_progress=sys.stderr.isatty())
    counts = ", ".join(f"{k}: {v}" for k, v in manifest["classes"].items())
    print(f"{args.num} images from {what} in {manifest['seconds']:.1f} s: {out} ({counts}); "
          f"{dataset.manifest_path(out)}")
    return 0


def check_data_and_models(spec: JobSpec) -> str:
    """Open the dataset once, and build G and D and run them on two samples, so a wrong path, an empty
    folder or a network that cannot be imported or has the wrong interface stops the job before it starts.
    The data is not opened for a remote cluster (RAY_ADDRESS), whose workers may see paths this machine does not."""
    from gan_models.conditioning import check_rampable
    from gan_models.registry import check_interface
    from orchestrator.data.sources import check_conditional, describe, labelled_subset, load_dataset, num_classes
    from orchestrator.train.networks import build_networks

    if os.environ.get("RAY_ADDRESS"):
        summary, classes = "opened by the workers", 0
    elif spec.data.source == "ray-data":  # listed, not decoded: the data may be larger than this machine
        from orchestrator.data.ray_data import survey

        found = survey(spec.data.path)
        check_enough_images(spec, found.images)
        if spec.eval.every:
            check_evaluation(spec, max(len(found.classes), 1))
        summary, classes = found.describe(), check_conditional(len(found.classes), spec.model.conditional)
    else:
        dataset = load_dataset(spec.data, spec.model)
        kept = labelled_subset(spec.data, dataset, spec.seed)
        check_enough_images(spec, len(dataset) if kept is None else len(kept))
        if spec.eval.every:
            check_evaluation(spec, num_classes(dataset))
        summary, classes = describe(dataset, kept), check_conditional(num_classes(dataset), spec.model.conditional)
    if spec.model.conditional and not classes:
        classes = 2  # interface check only: the workers count the real classes
    G, D = build_networks(spec, classes)
    check_interface(G, D, spec.model.latent_dim, spec.model.image_size, spec.model.channels, classes)
    if spec.train.condition_ramp is not None:
        check_rampable(G, D)
    return summary


def check_evaluation(spec: JobSpec, data_classes: int) -> None:
    """Evaluation needs labelled data; say whether it will use Inception features."""
    from orchestrator.evaluate.domain_classifier import check_labelled

    check_labelled(data_classes)
    print(f"Inception features: {check_inception(spec)}")


def check_inception(spec: JobSpec) -> str:
    """Whether evaluation will use Inception features; a weights file is read once here, so a wrong one stops
    the job before it starts, naming eval.inception_weights."""
    from gan_models.inception import check_weights
    from orchestrator.evaluate.inception import inception_weights

    path, line = inception_weights(spec.eval)
    if path is not None:
        try:
            check_weights(path)
        except ValueError as err:
            raise ValueError(f"eval.inception_weights: {err}") from None
    return line


def check_output_file(flag: str, path: str | None) -> None:
    """A file the command writes at its end: its folder must exist before the work starts, and the file must not
    (a result written before is never overwritten)."""
    if path is None:
        return
    if not Path(path).expanduser().resolve().parent.is_dir():
        raise ValueError(f"{flag}: no directory {Path(path).expanduser().resolve().parent} to write {path} into")
    if Path(path).expanduser().exists():
        raise ValueError(f"{flag}: {path} exists; name a new file, or remove it first")


def run_sweep(spec: JobSpec, export: str | None) -> int:
    from orchestrator.track import runs
    from orchestrator.tune import sweep

    try:
        outcome = sweep.run(spec, export)
    except KeyboardInterrupt:
        print("\nganorch: interrupted; the sweep's MLflow run is marked FAILED", file=sys.stderr)
        return 130
    except ValueError as err:  # found before the sweep starts (a tracking store the cluster's nodes cannot share)
        print(f"ganorch: cannot run {spec.name}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:
        print(f"ganorch: sweep failed: {err}", file=sys.stderr)
        return 1
    metric = spec.tune.metric
    print(f"{'trial':<14} {'status':<10} {metric:>10}  params")
    for trial in outcome.trials:
        value = "-" if trial["metric"] is None else f"{trial['metric']:.4g}"
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial["params"].items())
        reason = f"  ({trial['reason']})" if trial["reason"] else ""
        print(f"{trial['trial']:<14} {trial['status']:<10} {value:>10}  {params}{reason}")
    if outcome.best:
        print(f"best: {outcome.best['trial']} ({metric} {outcome.best['metric']:.4g}); its job spec is the parent "
              f"run's {sweep.BEST_JOB_ARTIFACT}" + (f" and {export}" if export else ""))
    print(f"MLflow parent run {outcome.parent_run_id}; "
          f"{runs.ui_hint(outcome.tracking_uri, outcome.parent_run_id)}")
    return 0


def ranks_line(summary: dict[str, Any]) -> str:
    """Where the ranks ran, and whether they ended with identical parameters (DDP's promise)."""
    digests = summary.get("parameter_digests", {})
    ranks = len(next(iter(digests.values()), []))
    differ = [name for name, per_rank in digests.items() if len(set(per_rank)) > 1]
    verdict = (f"parameters DIFFER across ranks: {', '.join(differ)}" if differ else
               f"parameters identical on all {ranks} ranks ("
               + ", ".join(f"{name} {per_rank[0][:12]}" for name, per_rank in digests.items()) + ")")
    workers = summary.get("workers") or []
    nodes = len({where.split(" (")[0] for where in workers})
    return f"workers: {ranks} on {nodes} node(s); {verdict}" + "".join(f"\n  rank {r}: {w}" for r, w in
                                                                     enumerate(workers))


def check_enough_images(spec: JobSpec, count: int) -> None:
    if count < spec.train.batch_size:
        raise ValueError(f"train.batch_size: got {spec.train.batch_size}, more than the {count} images the workers "
                         "share")


def sync_unsent(folders: list[str]) -> int:
    from orchestrator.track import outbox, store
    from orchestrator.track.redact import redact

    found = [Path(f) for f in folders] or sorted(p.parent for p in outbox.unsent_root().glob("*/*/run.json"))
    for folder in found:
        if not (folder / "run.json").is_file():
            print(f"ganorch: sync: {folder} is not a folder a run kept (no run.json)", file=sys.stderr)
            return EXIT_USAGE
    if not found:
        print(f"nothing to send: no folder under {outbox.unsent_root()}")
        return 0
    uri = store.tracking_uri()
    failed = 0
    for folder in found:
        try:
            run_id, count = outbox.sync(folder, uri)
        except Exception as err:
            print(f"ganorch: sync: could not send {folder} to MLflow at {redact(uri)}: "
                  f"{outbox.first_line(err)}", file=sys.stderr)
            if outbox.outage(err):  # the folders after it would wait in vain too
                return 1
            failed += 1  # a run this server does not hold, say: the other folders go on
            continue
        print(f"sent {count} item(s) of run {run_id} from {folder}")
        if (folder / outbox.REFUSED_FILE).is_file():
            print(f"ganorch: sync: what MLflow refused, and why, stays in {folder / outbox.REFUSED_FILE}",
                  file=sys.stderr)
    return 1 if failed else 0


def run_job(spec: JobSpec, run_name: str | None = None, resume: Any = None, command: str | None = None) -> int:
    from orchestrator.train import launch
    from orchestrator.train.failures import TrainingFailed

    try:
        outcome = launch.run(spec, run_name=run_name, resume=resume, started_at=launch.process_started_at())
    except KeyboardInterrupt:
        print("\nganorch: interrupted; the MLflow run is marked KILLED", file=sys.stderr)
        return 130
    except SystemExit as stop:  # how Ray's driver ends on SIGTERM (`ganorch stop`), Ray Train's on Ctrl-C
        print("\nganorch: stopped; the MLflow run is marked KILLED", file=sys.stderr)
        return 143 if stop.code == 15 else 130
    except ValueError as err:  # found before training starts (data the cluster cannot read, too few CPUs)
        print(f"ganorch: cannot run {spec.name}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except TrainingFailed as err:  # the workers failed for good: what failed, and what to do
        if err.trace:
            print(err.trace.rstrip(), file=sys.stderr)
        print(failure_line(err, spec, command), file=sys.stderr)
        return 1
    except Exception as err:  # anything else that ended it: in one line, without Ray's wrapper traceback
        print(f"ganorch: training failed: {str(err).strip().splitlines()[0] if str(err).strip() else repr(err)}",
              file=sys.stderr)
        return 1
    metrics = outcome.summary.get("metrics", {})
    print(", ".join([f"done: step {outcome.summary.get('step')}",
                     *(f"{k} {metrics[k]:.3f}" for k in ("loss_d", "loss_g", "d_real", "d_fake") if k in metrics)]))
    print(ranks_line(outcome.summary))
    from orchestrator.track import runs

    print(f"MLflow run {outcome.run_id}; {runs.ui_hint(outcome.tracking_uri, outcome.run_id)}")
    if outcome.checkpoint_path:
        print(f"final checkpoint: {outcome.checkpoint_path}")
    if outcome.skipped_files:
        shown = ", ".join(outcome.skipped_files[:5]) + (" ..." if len(outcome.skipped_files) > 5 else "")
        print(f"skipped {len(outcome.skipped_files)} images that could not be decoded (listed in the run's "
              f"data/skipped_files.txt): {shown}")
    for where in outcome.unsent:
        print(f"not all the run wrote is in MLflow: the rest is kept in {where} (ops.jsonl: what waited for MLflow, "
              "sent by `ganorch sync` on that host once MLflow answers; refused.jsonl: what MLflow refused, and why)")
    if outcome.summary.get("best_fid") is not None:
        print(f"best checkpoint: fid {outcome.summary['best_fid']:.2f}, artifact checkpoints/best/ of the run")
    for flag in outcome.summary.get("flags", []):
        print(f"unstable: {flag}")
    if outcome.summary.get("stopped"):
        print(f"stopped early (train.stop_on): {outcome.summary['stopped']}")
        return EXIT_STOPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
