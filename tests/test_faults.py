"""Faults on real components: training workers killed by PID while a run goes on."""

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_for

from orchestrator.spec import load
from orchestrator.track import store
from orchestrator.train import launch

REPO = Path(__file__).resolve().parents[1]


def traced_worker(folder: str, hold_s: float):
    """The real per-worker loop, which also writes `folder/<rank>.<pid>`: when it started, how many checkpoints it
    reported and the last one's step. Each report is held `hold_s`, so the run lasts long enough for a test to
    kill a worker."""

    def loop(config):
        import ray.train

        from orchestrator.train import worker

        trace = Path(folder, f"{ray.train.get_context().get_world_rank()}.{os.getpid()}")
        started = time.time()
        trace.write_text(f"{started} 0 0")
        report, reports = ray.train.report, []

        def held(metrics, checkpoint=None):
            report(metrics, checkpoint=checkpoint)
            reports.append(metrics["step"])
            trace.write_text(f"{started} {len(reports)} {metrics['step']}")
            time.sleep(hold_s)

        ray.train.report = held
        return worker.train_loop_per_worker(config)

    return loop


def reporting_worker(folder: Path, rank: int, since: float) -> tuple[int, int] | None:
    """The PID of rank `rank`'s worker that started after `since` and has reported two checkpoints, and the
    last one's step. (A report returns once Ray Train registered the report before it, which a restart resumes
    from. Workers of a group that failed may still be alive, being torn down.)"""
    for trace in folder.glob(f"{rank}.*"):
        try:
            started, reports, step = trace.read_text().split()
        except (OSError, ValueError):  # being written
            continue
        if float(started) > since and int(reports) >= 2:
            return int(trace.suffix[1:]), int(step)
    return None


def test_a_run_survives_two_killed_workers_in_one_run(ray_session, mlflow_store, tmp_path, capsys):
    """With the default resources.max_failures, workers killed by PID (rank 1, then rank 0), each after the group
    has reported a checkpoint: Ray Train restarts the workers from the latest checkpoint, the run finishes in one
    MLflow run with one metric point per step, its tags record each restart and why, and both ranks end with
    identical parameters."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    traces = tmp_path / "traces"
    traces.mkdir()
    steps = 16
    spec = load(REPO / "jobs/debug_dcgan.yaml", [f"tracking.storage_path={tmp_path / 'ray_storage'}",
                                                 f"train.steps={steps}",  # resources.max_failures: 3 by default
                                                 "tracking.metrics_every=1", "tracking.checkpoint_every=2",
                                                 "tracking.samples_every=1000", "eval.every=0"])
    killed: list[tuple[int, int, int]] = []  # (rank, pid, step it had reported)
    errors: list[BaseException] = []

    def kill_workers() -> None:
        since = 0.0
        try:
            for rank in (1, 0):
                pid, step = wait_for(lambda: reporting_worker(traces, rank, since), 120,
                                     f"rank {rank}'s next checkpoint")
                since = time.time()
                os.kill(pid, signal.SIGKILL)
                killed.append((rank, pid, step))
        except BaseException as err:  # seen by the test's thread below
            errors.append(err)

    killer = threading.Thread(target=kill_workers, daemon=True)
    killer.start()
    outcome = launch.run(spec, loop=traced_worker(str(traces), hold_s=0.5))
    killer.join(timeout=5)
    assert not errors and len(killed) == 2, (errors, killed)

    assert outcome.summary["step"] == steps
    digests = outcome.summary["parameter_digests"]
    assert all(len(set(per_rank)) == 1 and len(per_rank) == 2 for per_rank in digests.values()), digests
    c = store.client(mlflow_store)
    [run] = c.search_runs([c.get_experiment_by_name("debug_dcgan").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_id == outcome.run_id
    tags = run.data.tags
    assert tags["ganorch.restarts"] == "2" and tags["ganorch.outcome"] == "completed", (killed, tags)
    for n, (rank, _, step) in enumerate(killed, start=1):
        why = tags[f"ganorch.restart.{n}"]
        assert why.startswith("workers restarted after a failure (") and f"rank {rank}" in why, why
        resumed = int(why.split("continued from step ")[1].split(":")[0])
        assert step - 2 <= resumed <= step and resumed % 2 == 0, (why, step)
    # Steps taken again after a restore were not logged again: one point per step, none missing.
    for key in ("loss_d", "loss_g", "d_real"):
        assert [m.step for m in c.get_metric_history(run.info.run_id, key)] == list(range(1, steps + 1)), key
    printed = capsys.readouterr().out
    assert "workers restarted from the latest checkpoint after a failure (restart 2)" in printed, printed


def test_a_corrupted_latest_checkpoint_gives_way_to_the_one_before(ray_session, mlflow_store, tmp_path, capsys):
    """A run keeps its 2 latest checkpoints (in Ray Train's storage and in MLflow). Its latest is then damaged;
    starting the run again under its name passes over it, says why, and continues from the one before, in the
    same MLflow run, with one metric point per step."""
    storage = tmp_path / "ray_storage"
    common = [f"tracking.storage_path={storage}", "resources.num_workers=1", "tracking.metrics_every=1",
              "tracking.checkpoint_every=2", "tracking.keep_checkpoints=2"]
    first = launch.run(load(REPO / "jobs/debug_dcgan.yaml", [*common, "train.steps=6"]), run_name="again",
                       show_progress=False)
    kept = sorted(p for p in storage.glob("again/checkpoint_*") if p.is_dir())
    assert [torch_step(p) for p in kept] == [4, 6]
    c = store.client(mlflow_store)
    assert [a.path for a in c.list_artifacts(first.run_id, "checkpoints")] == \
        ["checkpoints/step_000004", "checkpoints/step_000006"]

    latest = kept[-1] / "checkpoint.pt"
    latest.write_bytes(latest.read_bytes()[:-100])
    second = launch.run(load(REPO / "jobs/debug_dcgan.yaml", [*common, "train.steps=8"]), run_name="again")
    assert second.run_id == first.run_id and second.summary["step"] == 8
    tags = c.get_run(first.run_id).data.tags
    assert tags["ganorch.passed_over"].startswith(f"{latest}: corrupted or truncated")
    assert tags["ganorch.resumed_from"] == f"step 4: {kept[0]}"
    assert [m.step for m in c.get_metric_history(first.run_id, "loss_d")] == list(range(1, 9))
    assert f"passed over a corrupted checkpoint: {latest}: corrupted or truncated" in capsys.readouterr().out


def torch_step(ray_checkpoint: Path) -> int:
    from orchestrator.train import checkpoint

    return checkpoint.load(ray_checkpoint)["step"]


def test_an_error_in_the_training_code_that_recurs_after_a_restart_fails_at_once(ray_session, mlflow_store,
                                                                                  tmp_path, capsys):
    """A user's D that raises on rank 1 in every start of the workers: restarted once (it might have been
    transient), then, the same error again, the run fails without using its other restarts; the terminal shows the
    error's own traceback and ends with one line that says what failed, when, and what to do."""
    from orchestrator.cli import main
    from orchestrator.track.tags import TAG_OUTCOME, TAG_RESTARTS

    job = REPO / "jobs/debug_dcgan.yaml"
    assert main(["run", str(job), "--set", f"tracking.storage_path={tmp_path / 'ray_storage'}", "--set",
                 "model.discriminator=user_networks:BrokenDiscriminator", "--set", "eval.every=0"]) == 1
    printed = capsys.readouterr()
    c = store.client(mlflow_store)
    [run] = c.search_runs([c.get_experiment_by_name("debug_dcgan").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags[TAG_RESTARTS] == "1", run.data.tags
    last = printed.err.strip().splitlines()[-1]
    assert last.startswith("ganorch: training failed after step ") or last.startswith(
        "ganorch: training failed before its first step"), last
    assert ("rank 1 raised ValueError: planted bug: D cannot score this batch, again after a restart, so it was not "
            f"retried. To go on, fix the error above, then run it again (it has no checkpoint): ganorch run {job} "
            f"--set tracking.storage_path={tmp_path / 'ray_storage'} --set "
            "model.discriminator=user_networks:BrokenDiscriminator --set eval.every=0 (Ray's own report: ") in last, last
    assert run.data.tags[TAG_OUTCOME].startswith("failed after step "), run.data.tags[TAG_OUTCOME]
    trace = printed.err[:printed.err.rindex(last)]
    assert "Traceback (most recent call last)" in trace and "user_networks.py" in trace, trace
    assert 'raise ValueError("planted bug: D cannot score this batch")' in trace, trace
    for noise in ("GLHF", "WorkerGroupError", "ControllerError", "RayTaskError", "gloo"):
        assert noise not in printed.out + printed.err, noise


def test_a_lost_worker_is_explained_in_one_line(monkeypatch):
    """What Ray Train raises when rank 1's process was killed (and rank 0's collective lost its peer), in words."""
    from ray.exceptions import ActorDiedError
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    from orchestrator.cli import failure_line
    from orchestrator.train import failures

    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [10.0.0.2]:41234: "
                        "Connection reset by peer")
    # What Ray Train 2.60 raised when rank 1 of `ganorch run jobs/quickstart.yaml` was killed with SIGKILL.
    killed = WorkerHealthCheckFailedError("A worker health check failed.", failure=ActorDiedError())
    err = WorkerGroupError("Training failed due to worker errors:\n...GLHF!", {0: gloo, 1: killed})
    explained = failures.explain(err, "abc123", {"step": 412, "checkpoint_step": 400})
    assert explained.what == "rank 1 was lost (its process died: killed, out of memory or crashed)", explained.what
    assert not explained.trace
    spec = load(REPO / "jobs/quickstart.yaml", ["resources.max_failures=0"])
    line = failure_line(explained, spec, "ganorch run jobs/quickstart.yaml")
    assert line.startswith("ganorch: training failed after step 412: rank 1 was lost (its process died"), line
    assert ("continue from its latest checkpoint (step 400): ganorch run jobs/quickstart.yaml --resume abc123; "
            "resources.max_failures restarts the workers on their own") in line, line
    assert "\n" not in line and "GLHF" not in line and "gloo" not in line

    restarted = failures.explain(err, "abc123", {"step": 412, "checkpoint_step": 400, "restarts": 3})
    line = failure_line(restarted, load(REPO / "jobs/quickstart.yaml"), None)
    assert "the workers were restarted 3 time(s) (resources.max_failures: 3)" in line, line
    early = failure_line(failures.explain(err, "abc123", {}), spec, "ganorch run job.yaml")
    assert early.startswith("ganorch: training failed before its first step") and \
        "run it again (it has no checkpoint): ganorch run job.yaml" in early, early


class Board:
    def __init__(self):
        self.reasons = []
        self.failed = type("Remote", (), {"remote": lambda _, reason: self.reasons.append(reason)})()


def test_the_watch_ends_the_run_only_when_the_code_raises_the_same_again_without_progress():
    from ray.exceptions import ActorDiedError

    from orchestrator.train import failures

    board = Board()
    watch = failures.FailureWatch(board)
    watch.after_exception(None, {1: ActorDiedError()})
    watch.after_exception(None, {1: ActorDiedError()})          # killed again: restarted, however often
    watch.after_exception(None, {0: ValueError("flaky read")})  # a first error: restarted
    watch.after_report(None, [{"step": 40}], checkpoint=object())
    watch.after_exception(None, {0: ValueError("flaky read")})  # again, but after a checkpoint: restarted
    watch.after_exception(None, {0: KeyError("other")})         # another one: restarted
    watch.after_report(None, [{"step": 41}], checkpoint=None)  # metrics alone are no progress
    with pytest.raises(failures.RecurringError, match="rank 0 raised KeyError: 'other', again after a restart"):
        watch.after_exception(None, {0: KeyError("other")})
    watch.after_exception(None, {0: MemoryError("tried to allocate 2.00 GiB")})
    with pytest.raises(failures.RecurringError, match="2.50 GiB"):  # numbers aside, the same error
        watch.after_exception(None, {0: MemoryError("tried to allocate 2.50 GiB")})
    assert board.reasons[0].startswith("rank 1 was lost") and board.reasons[2] == "rank 0 raised ValueError: flaky read"
