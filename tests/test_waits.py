"""No wait on another process is unbounded: rank 0's wait for Tune's verdict, and the other ranks' wait for rank 0's
domain classifier, end in an error naming what was awaited."""

import queue
import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from orchestrator.spec import load

REPO = Path(__file__).resolve().parents[1]


class NeverAnswers(queue.Queue):
    """A verdict queue whose driver was lost: nothing ever comes."""

    def get(self, block: bool = True, timeout: float | None = None):
        if timeout is None:
            raise AssertionError("verdicts.get() without a timeout waits forever")
        return super().get(block, timeout)


def test_rank_0_gives_up_on_a_verdict_that_never_comes(process_group, monkeypatch):
    from orchestrator.train import periodic
    from orchestrator.train.build import build
    from orchestrator.train.loop import WorkerContext

    monkeypatch.setattr(periodic, "VERDICT_TIMEOUT_S", 0.2)
    t = build(load(REPO / "jobs/debug_dcgan.yaml", ["resources.num_workers=1"]), WorkerContext(torch.device("cpu")),
              None)
    with pytest.raises(TimeoutError, match=r"no verdict from the Tune trial's driver on the checkpoint at step 0 "
                                           r"after 0.2 s \(was it lost\?\)"):
        periodic.checkpoint_and_report(t, periodic.Outcome(), None, None, NeverAnswers())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Classifier:
    """domain_classifier's answer, after `seconds` of rank 0's work."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, dataset, num_classes, *, channels, **_):
        from gan_models.classifier import DomainClassifier
        from orchestrator.evaluate.domain_classifier import Classifier as Found

        time.sleep(self.seconds)
        return Found(DomainClassifier(channels, num_classes).eval(), 0.5, Path("classifier.pt"), trained_now=True)


def build_evaluator(rank: int, port: int, group_timeout_s: float, wait_s: float, work_s: float,
                    results: "mp.Queue") -> None:
    """One rank of a 2-process gloo group building an Evaluator while rank 0 takes `work_s` for its classifier."""
    import torch.distributed as dist
    from torch.utils.data import TensorDataset

    from orchestrator.evaluate import evaluator

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    dist.barrier()  # both started, however slowly: from here collectives time out after group_timeout_s
    dist.set_timeout(timedelta(seconds=group_timeout_s))
    evaluator.CLASSIFIER_WAIT_S = wait_s
    evaluator.domain_classifier = Classifier(work_s)
    data = TensorDataset(torch.zeros(8, 1, 16, 16), torch.arange(8) % 2)
    try:
        found = evaluator.Evaluator(data, 2, 0, num_samples=8, latent_dim=2, image_size=16, channels=1,
                                    cache_dir=None, seed=0, device=torch.device("cpu"))
        results.put((rank, "ok", found.classifier_accuracy))
    except Exception as err:
        results.put((rank, type(err).__name__, str(err).splitlines()[0] if str(err) else ""))
    if rank == 0:
        time.sleep(wait_s + 2)  # rank 0 still at work (or lost) while the other gives up


def run_pair(group_timeout_s: float, wait_s: float, work_s: float) -> dict[int, tuple]:
    """What each rank of the pair ended with, within a few seconds; the processes are stopped in any case."""
    context = mp.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=build_evaluator, args=(r, port, group_timeout_s, wait_s, work_s, results))
                 for port in [free_port()] for r in range(2)]
    for p in processes:
        p.start()
    found: dict[int, tuple] = {}
    try:
        while len(found) < 2:
            rank, *outcome = results.get(timeout=60)
            found[rank] = tuple(outcome)
            if rank == 1 and outcome[0] != "ok":
                break
    except queue.Empty:
        pass
    finally:
        for p in processes:
            p.kill()
            p.join()
    return found


def test_the_other_ranks_give_up_on_a_classifier_rank_0_never_sends():
    found = run_pair(group_timeout_s=120, wait_s=2, work_s=300)
    assert found.get(1) == ("TimeoutError", "gave up waiting for the domain classifier from rank 0 after 2 s "
                                            "(was rank 0 lost?)"), found


def test_the_other_ranks_wait_for_a_classifier_longer_than_the_process_groups_timeout():
    found = run_pair(group_timeout_s=2, wait_s=60, work_s=5)
    assert found == {0: ("ok", 0.5), 1: ("ok", 0.5)}, found
