"""The outbox tells an outage (no answer, 429, 5xx: the write waits) from a write that cannot succeed (4xx, a local
error: reported once, set aside, the rest goes on); its HTTP settings are its thread's, not the process's."""

import http.server
import json
import os
import threading
from pathlib import Path

import torch
from PIL import Image

from orchestrator.track.outbox import REFUSED_FILE, Outbox


class StubMLflow(http.server.BaseHTTPRequestHandler):
    """Answers MLflow's REST calls with the next status of `answers` (then 200), and records what it was asked."""

    answers: list[int] = []
    asked: list[tuple[int, dict]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        code = self.answers.pop(0) if self.answers else 200
        self.asked.append((code, body))
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps({} if code == 200 else {"error_code": "ENDPOINT_NOT_FOUND" if code == 404
                                                            else "TEMPORARILY_UNAVAILABLE", "message": "no"}).encode())

    def log_message(self, *args):
        pass


def stub_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StubMLflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_an_outage_waits_and_a_refused_write_is_reported_once_and_set_aside(monkeypatch, tmp_path):
    monkeypatch.setenv("GANORCH_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    StubMLflow.answers[:], StubMLflow.asked[:] = [503, 429, 200, 404], []
    server = stub_server()
    lines = []
    box = Outbox(f"http://127.0.0.1:{server.server_port}", "run1", "rank0", notify=lines.append)
    box.tags({"a": "1"})   # 503, then 429: waits, then sent
    box.tags({"b": "2"})   # 404: cannot succeed; set aside
    box.tags({"c": "3"})   # sent after it
    kept = box.close(wait_s=30)
    server.shutdown()

    assert [(code, body["key"]) for code, body in StubMLflow.asked] == [(503, "a"), (429, "a"), (200, "a"),
                                                                       (404, "b"), (200, "c")]
    assert sum("cannot be reached" in line for line in lines) == 1 and any("answers again" in line for line in lines)
    (refusal,) = [line for line in lines if "could not write" in line]
    assert "tags b" in refusal and "RestException" in refusal
    assert [json.loads(line)["tags"] for line in (kept / REFUSED_FILE).read_text().splitlines()] == [{"b": "2"}]
    # MLflow's retries were turned off for the outbox's thread alone (each answer above is one request).
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES

    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ and MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() > 0


def test_a_missing_file_is_reported_once_and_the_run_goes_on(mlflow_store, tmp_path, monkeypatch):
    from orchestrator.track import store

    monkeypatch.setenv("GANORCH_HOME", str(tmp_path / "home"))
    c = store.client(mlflow_store)
    run_id = c.create_run(c.create_experiment("outbox")).info.run_id
    lines = []
    box = Outbox(mlflow_store, run_id, "rank0", notify=lines.append)
    image = tmp_path / "step_1.png"
    image.write_bytes(b"png")
    with box.lock:  # the outbox's thread waits meanwhile
        box.artifacts([image], "samples")
        os.unlink(next(box.files.rglob("step_1.png")))  # gone before it was sent: a local error
        box.tags({"after": "yes"})
    assert box.close(wait_s=20) is not None
    assert c.get_run(run_id).data.tags["after"] == "yes"
    (refusal,) = lines
    assert "could not write artifacts step_1.png under samples/" in refusal and "FileNotFoundError" in refusal


def test_a_held_outbox_sends_nothing_until_released_and_makes_files_in_its_thread(mlflow_store, monkeypatch):
    """Rank 0's outbox is held until the first training step: until then it neither sends nor makes its client
    (importing MLflow), and a file put with `render` is written by the outbox's thread, not the caller's."""
    import time

    from orchestrator.track import store

    c = store.client(mlflow_store)
    run_id = c.create_run(c.create_experiment("held")).info.run_id
    made, writers = [], []
    monkeypatch.setattr(store, "client", lambda uri: made.append(uri) or c)
    box = Outbox(mlflow_store, run_id, "rank0", held=True)
    box.tags({"early": "1"})
    box.render("grid.png", lambda path: writers.append(threading.current_thread().name) or path.write_bytes(b"png"),
               "samples")
    time.sleep(0.5)
    assert made == [] and writers == [] and "early" not in c.get_run(run_id).data.tags
    box.release()
    assert box.close(wait_s=20) is None
    assert made == [mlflow_store] and writers == ["ganorch-outbox-rank0"]
    assert c.get_run(run_id).data.tags["early"] == "1"
    assert [a.path for a in c.list_artifacts(run_id, "samples")] == ["samples/grid.png"]


def test_while_mlflow_is_down_files_are_drawn_and_kept_on_disk(tmp_path, monkeypatch):
    """Grids waiting for MLflow wait on disk, not in memory; at the end they are kept with the rest."""
    import time

    monkeypatch.setenv("GANORCH_HOME", str(tmp_path))
    box = Outbox("http://127.0.0.1:1", "run2", "rank0", notify=lambda line: None)
    box.tags({"first": "1"})  # nothing answers: the thread waits on this one
    box.render("step_000000.png", lambda path: path.write_bytes(b"png"), "samples")
    deadline = time.monotonic() + 10
    while not list(box.files.rglob("step_000000.png")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(box.files.rglob("step_000000.png")), "drawn while the write before it waits"
    kept = box.close(wait_s=1)
    ops = [json.loads(line) for line in (kept / "ops.jsonl").read_text().splitlines()]
    assert [op["op"] for op in ops] == ["tags", "artifacts"] and ops[1]["path"] == "samples"
    assert (kept / ops[1]["files"][0]).read_bytes() == b"png"


def test_a_file_still_being_drawn_when_the_run_ends_is_kept_as_refused_not_half_made(tmp_path, monkeypatch):
    """MLflow down to the end, and the thread stuck making a grid: close() stops waiting for it and keeps it with
    the reason among the refused, the rest among what waits for `ganorch sync`."""
    monkeypatch.setenv("GANORCH_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # close() waits 6 s for the thread
    box = Outbox("http://127.0.0.1:1", "run3", "rank0", notify=lambda line: None)
    started, finish = threading.Event(), threading.Event()

    def stuck(path):
        started.set()
        finish.wait(30)
        path.write_bytes(b"png")

    box.tags({"first": "1"})  # nothing answers: the thread draws what waits behind it
    box.render("step_000000.png", stuck, "samples")
    assert started.wait(10), "the thread never started the grid"
    kept = box.close(wait_s=0.5)
    assert box.thread.is_alive(), "close() returned while the grid was still being drawn"
    finish.set()
    ops = [json.loads(line) for line in (kept / "ops.jsonl").read_text().splitlines()]
    assert [op["op"] for op in ops] == ["tags"]
    (refused,) = [json.loads(line) for line in (kept / REFUSED_FILE).read_text().splitlines()]
    assert refused["refused"] == "its file was still being made when the run ended" and "drawing" in refused
    assert not list(kept.rglob("step_000000.png"))


def test_a_file_that_cannot_be_drawn_is_set_aside_and_the_rest_goes_on(mlflow_store, tmp_path, monkeypatch):
    from orchestrator.track import store

    monkeypatch.setenv("GANORCH_HOME", str(tmp_path / "home"))
    c = store.client(mlflow_store)
    run_id = c.create_run(c.create_experiment("draw")).info.run_id
    lines = []
    box = Outbox(mlflow_store, run_id, "rank0", notify=lines.append, held=True)  # closing sends it all

    def broken(path):
        raise RuntimeError("no grid today")

    box.render("step_000001.png", broken, "samples")
    box.tags({"after": "yes"})
    kept = box.close(wait_s=20)
    assert c.get_run(run_id).data.tags["after"] == "yes"
    (line,) = lines
    assert "could not make artifacts step_000001.png under samples/: RuntimeError: no grid today" in line, line
    (refused,) = [json.loads(line) for line in (kept / REFUSED_FILE).read_text().splitlines()]
    assert refused["refused"] == "RuntimeError: no grid today"


def test_waiting_for_what_was_put_returns_once_sent_or_as_soon_as_mlflow_is_down(mlflow_store, tmp_path, monkeypatch):
    """Rank 0 waits at a checkpoint until the steps before it are in MLflow (a restart from it does not log them
    again), but not while MLflow is down: that would stop training."""
    import time

    from orchestrator.track import store

    monkeypatch.setenv("GANORCH_HOME", str(tmp_path / "home"))
    c = store.client(mlflow_store)
    run_id = c.create_run(c.create_experiment("wait")).info.run_id
    box = Outbox(mlflow_store, run_id, "rank0", held=True)
    box.metrics(1, {"loss_d": 0.5})
    assert box.wait_sent(timeout_s=30)
    assert [m.step for m in c.get_metric_history(run_id, "loss_d")] == [1]
    box.close(wait_s=5)

    down = Outbox("http://127.0.0.1:1", "run3", "rank0", notify=lambda line: None)
    down.metrics(1, {"loss_d": 0.5})
    started = time.monotonic()
    assert not down.wait_sent(timeout_s=30) and time.monotonic() - started < 10
    down.close(wait_s=0)


def test_gif_frames_are_kept_shrunk_and_spread_over_training():
    import numpy as np

    from orchestrator.track.run_logger import MAX_FRAMES, RunLogger

    logger = RunLogger("http://127.0.0.1:9", "0" * 32, notify=lambda line: None, held=True)
    for step in range(0, 2500, 10):
        logger.keep_frame(step, np.zeros((1100, 600, 3), np.uint8))
    steps = sorted(logger.frames)
    assert len(steps) == MAX_FRAMES and (steps[0], steps[-1]) == (0, 2490)
    gaps = np.diff(steps)
    assert set(gaps) <= {10, 20}, sorted(set(gaps))  # thinned evenly, not the early ones again and again
    assert logger.frames[0].shape == (367, 200, 3)  # at most 512 px a side: shrunk 3 times
    assert logger.close(0) is None


def test_sync_sets_a_refused_op_aside_and_sends_the_ops_after_it(mlflow_store, tmp_path):
    from orchestrator.track import store
    from orchestrator.track.outbox import OPS_FILE, sync

    c = store.client(mlflow_store)
    run_id = c.create_run(c.create_experiment("refused")).info.run_id
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "run.json").write_text(json.dumps({"run_id": run_id, "host": "here"}))
    ops = [{"op": "artifacts", "files": ["000001/gone.png"], "path": "samples"},  # its file is missing: refused
           {"op": "tags", "tags": {"after": "sent"}}]
    (kept / OPS_FILE).write_text("".join(json.dumps(op) + "\n" for op in ops))
    assert sync(kept, mlflow_store) == (run_id, 1)  # the refused op is not counted as sent
    assert c.get_run(run_id).data.tags["after"] == "sent"
    (refused,) = [json.loads(line) for line in (kept / REFUSED_FILE).read_text().splitlines()]
    assert refused["files"] == ["000001/gone.png"] and refused["refused"]
    assert not (kept / OPS_FILE).exists()  # the rest is done: only what people should read stays


def test_images_of_steps_a_restart_retakes_are_not_logged_again():
    from orchestrator.track.run_logger import RunLogger

    logger = RunLogger("http://127.0.0.1:9", "0" * 32, notify=lambda line: None, held=True)
    assert logger.image_key("samples", 0) == "samples"  # a fresh run logs every grid
    logger.logged_through = {"loss_d": 40, "fid": 30}  # what a resume read: steps through 40 were logged
    assert logger.image_key("samples", 40) is None and logger.image_key("samples", 41) == "samples"
    logger.logged_through, logger.floor = {}, 20  # MLflow could not be read: the checkpoint's step
    assert logger.image_key("interpolation", 20) is None and logger.image_key("interpolation", 21) == "interpolation"
    assert logger.close(0) is None


def kept_by_a_start_that_failed(run_id: str, steps: list[int], grid: bytes) -> None:
    """What a start of `run_id` keeps when it fails with MLflow out of reach: the metrics of `steps`, a tag, and
    the grid of the last step, also as MLflow's image `samples`."""
    from PIL import Image

    box = Outbox("http://127.0.0.1:1", run_id, "rank0", notify=lambda line: None)
    for step in steps:
        box.metrics(step, {"loss_d": float(step)})
    box.tags({"ganorch.workers": f"as at step {steps[-1]}"})
    box.render(f"step_{steps[-1]:06d}.png", lambda path: Image.new("L", (4, 4), grid[0]).save(path, format="PNG"),
               "samples", image_key="samples", step=steps[-1])
    box.close(wait_s=0)


def images(client, run_id: str) -> list[str]:
    """The steps of MLflow image `samples`, one per image logged."""
    return sorted(a.path.split("+")[2] for a in client.list_artifacts(run_id, "images")
                  if a.path.endswith(".png"))


def test_a_restart_sends_first_what_the_starts_before_it_kept_on_this_host(mlflow_store, tmp_path, monkeypatch):
    """Workers Ray Train restarts (a resize, a failure) log to the same run: what the failed starts had not sent is
    sent before the new one reads what was logged (and before its own writes), so it is neither lost nor logged
    twice."""
    from orchestrator.track import store
    from orchestrator.track.outbox import unsent_root
    from orchestrator.track.run_logger import RunLogger

    monkeypatch.setenv("GANORCH_HOME", str(tmp_path / "home"))
    c = store.client(mlflow_store)
    run_id = c.create_run(c.create_experiment("restarts")).info.run_id
    kept_by_a_start_that_failed(run_id, [5, 6], b"\x40")
    kept_by_a_start_that_failed(run_id, [6, 7], b"\x80")  # the same outbox serials: kept beside the first's
    kept = unsent_root() / run_id / "rank0"
    assert sorted(p.name for p in kept.iterdir() if p.is_dir()) == ["000001", "000001.1"]

    lines = []
    logger = RunLogger(mlflow_store, run_id, notify=lines.append, held=True)
    logger.set_tag("ganorch.workers", "this start's")  # as open_logger does, before resuming
    logger.resuming(4)
    logger.release()
    assert not kept.parent.exists() and not lines, lines
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "loss_d")] == [(5, 5.0), (6, 6.0), (7, 7.0)]
    for step, shade in ((6, 0x40), (7, 0x80)):
        grid = Path(c.download_artifacts(run_id, f"samples/step_{step:06d}.png", str(tmp_path)))
        assert Image.open(grid).getpixel((0, 0)) == shade
    assert images(c, run_id) == ["6", "7"]
    for step in (6, 7, 8):  # retaken after the restart: steps 6 and 7 were logged by the starts before
        logger.log_metrics(step, {"loss_d": 10.0 * step})
        logger.log_samples(step, torch.zeros(1, 1, 4, 4), columns=1)
    assert logger.close(wait_s=20) is None
    assert [m.step for m in c.get_metric_history(run_id, "loss_d")] == [5, 6, 7, 8]
    assert images(c, run_id) == ["6", "7", "8"]
    assert c.get_run(run_id).data.tags["ganorch.workers"] == "this start's"


def test_a_restart_with_mlflow_down_leaves_the_steps_kept_before_it_to_what_kept_them(tmp_path, monkeypatch):
    from orchestrator.track.outbox import unsent_root
    from orchestrator.track.run_logger import RunLogger

    monkeypatch.setenv("GANORCH_HOME", str(tmp_path / "home"))
    kept_by_a_start_that_failed("1" * 32, [5, 6], b"\x40")
    logger = RunLogger("http://127.0.0.1:1", "1" * 32, notify=lambda line: None, held=True)
    logger.resuming(4)
    assert (logger.floor, logger.logged_through) == (4, {"loss_d": 6})
    assert logger.image_key("samples", 6) is None and logger.image_key("samples", 7) == "samples"
    for step in (5, 6, 7):
        logger.log_metrics(step, {"loss_d": 10.0 * step})
    kept = logger.close(wait_s=0)
    assert kept == unsent_root() / ("1" * 32) / "rank0"
    metrics = [(op["step"], op["values"]["loss_d"]) for op in map(json.loads, (kept / "ops.jsonl").read_text().splitlines())
               if op["op"] == "metrics"]
    assert metrics == [(5, 5.0), (6, 6.0), (7, 70.0)]  # the earlier start's, then this one's: each step once


def test_what_mlflow_could_not_take_at_a_restart_is_sent_when_it_is_back(mlflow_store, tmp_path, monkeypatch):
    """MLflow down as the workers restart, back before the end: the earlier start's kept steps are sent at the end,
    each step once, and its tags do not overwrite those this start set since."""
    from orchestrator.track import run_logger, store
    from orchestrator.track.outbox import unsent_root

    monkeypatch.setenv("GANORCH_HOME", str(tmp_path / "home"))
    c = store.client(mlflow_store)
    run_id = c.create_run(c.create_experiment("back")).info.run_id
    kept_by_a_start_that_failed(run_id, [5, 6], b"\x40")
    down = iter([ConnectionError("MLflow is down")])
    real_sync = run_logger.sync

    def sync(*args, **kwargs):
        if (err := next(down, None)) is not None:
            raise err
        return real_sync(*args, **kwargs)

    monkeypatch.setattr(run_logger, "sync", sync)
    logger = run_logger.RunLogger(mlflow_store, run_id, notify=lambda line: None, held=True)
    logger.set_tag("ganorch.workers", "this start's")
    logger.resuming(4)
    logger.release()
    assert (logger.floor, logger.logged_through) == (4, {"loss_d": 6})
    for step in (5, 6, 7):
        logger.log_metrics(step, {"loss_d": 10.0 * step})
        logger.log_samples(step, torch.zeros(1, 1, 4, 4), columns=1)
    assert logger.close(wait_s=20) is None
    assert [(m.step, m.value) for m in c.get_metric_history(run_id, "loss_d")] == [(5, 5.0), (6, 6.0), (7, 70.0)]
    assert images(c, run_id) == ["6", "7"]
    assert c.get_run(run_id).data.tags["ganorch.workers"] == "this start's"
    assert not (unsent_root() / run_id).exists()


def test_a_kept_folder_that_cannot_be_read_is_reported_and_the_restart_goes_on(mlflow_store, tmp_path, monkeypatch):
    from orchestrator.track import store
    from orchestrator.track.outbox import unsent_root
    from orchestrator.track.run_logger import RunLogger

    monkeypatch.setenv("GANORCH_HOME", str(tmp_path / "home"))
    c = store.client(mlflow_store)
    run_id = c.create_run(c.create_experiment("torn")).info.run_id
    kept = unsent_root() / run_id / "rank0"
    kept.mkdir(parents=True)
    (kept / "run.json").write_text(json.dumps({"run_id": run_id, "host": "here"}))
    (kept / "ops.jsonl").write_text('{"op": "metrics", "step": 5, "values": {"loss_d": 5.0}, "timestamp": 1}\n{"op": "me')
    lines = []
    logger = RunLogger(mlflow_store, run_id, notify=lines.append, held=True)
    logger.resuming(4)
    logger.release()
    assert any(f"could not read what an earlier start of this run kept in {kept}" in line for line in lines), lines
    assert any("could not be sent" in line for line in lines), lines
    logger.log_metrics(7, {"loss_d": 7.0})
    assert logger.close(wait_s=20) == kept  # still there, for `ganorch sync` to say what is wrong
    assert [m.step for m in c.get_metric_history(run_id, "loss_d")] == [7]


def test_sync_sends_every_folder_it_can_and_names_those_it_cannot(mlflow_store, tmp_path, monkeypatch, capsys):
    """A folder of a run this server does not hold (kept while logging to another) fails alone: exit 1."""
    from orchestrator.cli import main
    from orchestrator.track import store
    from orchestrator.track.outbox import unsent_root

    monkeypatch.setenv("GANORCH_HOME", str(tmp_path / "home"))
    c = store.client(mlflow_store)
    run_id = c.create_run(c.create_experiment("sync")).info.run_id
    assert main(["sync"]) == 0 and "nothing to send" in capsys.readouterr().out
    elsewhere = "0" * 32
    kept_by_a_start_that_failed(elsewhere, [3], b"\x40")
    kept_by_a_start_that_failed(run_id, [3], b"\x40")
    assert main(["sync"]) == 1
    printed = capsys.readouterr()
    assert f"could not send {unsent_root() / elsewhere / 'rank0'}" in printed.err and "not found" in printed.err
    assert f"of run {run_id} from" in printed.out
    assert [m.step for m in c.get_metric_history(run_id, "loss_d")] == [3]
    assert not (unsent_root() / run_id).exists()
    assert (unsent_root() / elsewhere / "rank0" / "ops.jsonl").is_file()  # kept for a sync to its own server
