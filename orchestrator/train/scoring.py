"""Where G_ema is scored: in-line, every rank scoring its share while training waits (the default), or in an evaluator
actor of its own (eval.background) while the workers train on. Either way the loop takes each evaluation's scores in
step order, with what to keep as the best checkpoint should they be the best."""

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from orchestrator.distributed import ddp
from orchestrator.evaluate.domain_classifier import check_labelled, check_tstr
from orchestrator.spec import JobSpec
from orchestrator.track.tags import TAG_CLASSIFIER, TAG_CLASSIFIER_ACCURACY, TAG_COLLAPSE_YARDSTICK, TAG_INCEPTION

if TYPE_CHECKING:
    from orchestrator.evaluate.evaluator import Evaluator

# Evaluations rank 0 may have in the evaluator actor at once: one more waits for the oldest, so scores never fall
# more than one evaluation behind training.
MAX_PENDING = 1
# How long rank 0 waits for the evaluator (its start, with the domain classifier, or an evaluation) while the other
# ranks wait in a collective: under the process group's timeout (Ray Train's: 30 min), so the run fails with rank
# 0's error, which names what to change.
EVALUATOR_WAIT_S = 1500.0


def build_scoring(spec: JobSpec, device: torch.device, logger: Any, dataset: Any, data_classes: int, classes: int,
                  rank: int, streamed: bool) -> "InlineScoring | BackgroundScoring":
    """The run's scoring, as eval.background says; rank 0 tags the run with the evaluator's classifier through
    `logger` (in the background, once the actor has it)."""
    if spec.eval.background:
        check_labelled(data_classes)  # here, not first in the actor
        if spec.eval.tstr:
            check_tstr(spec.eval.tstr_samples, data_classes, classes)
        return BackgroundScoring(spec, classes, rank, logger)
    evaluator, tags = build_evaluator(spec, device, dataset, data_classes, classes, streamed)
    for key, value in tags.items() if logger else ():
        logger.set_tag(key, value)
    return InlineScoring(evaluator)


def build_evaluator(spec: JobSpec, device: torch.device, dataset: Any, data_classes: int, classes: int,
                    streamed: bool) -> tuple["Evaluator", dict[str, str]]:
    """The spec's evaluator and the run's tags that name its classifier, Inception's weights and the real images
    mode collapse is judged against. `streamed`: a Ray Data source, whose reference images are a sample of its
    files, read into memory."""
    from orchestrator.evaluate.evaluator import Evaluator
    from orchestrator.evaluate.inception import inception_weights

    m = spec.model
    inception, inception_line = inception_weights(spec.eval)
    if streamed:
        from orchestrator.data import ray_data
        dataset = ray_data.eval_sample(spec.data.path, num_samples=spec.eval.num_samples, image_size=m.image_size,
                                       channels=m.channels, seed=spec.seed)
    evaluator = Evaluator(dataset, data_classes, classes, num_samples=spec.eval.num_samples, latent_dim=m.latent_dim,
                          image_size=m.image_size, channels=m.channels, cache_dir=spec.eval.cache_dir, seed=spec.seed,
                          device=device, inception=inception,
                          tstr_samples=spec.eval.tstr_samples if spec.eval.tstr else 0)
    return evaluator, {TAG_CLASSIFIER: evaluator.classifier_path,
                       TAG_CLASSIFIER_ACCURACY: f"{evaluator.classifier_accuracy:.4f}", TAG_INCEPTION: inception_line,
                       TAG_COLLAPSE_YARDSTICK: evaluator.yardstick_line}


@dataclass
class Scored:
    """One evaluation's scores. `state`: in the background, rank 0's copy of the training state at `step` (None on
    the other ranks); in-line, None: the state is the networks' own, as the scores come at their step."""
    step: int
    scores: dict[str, float]
    state: dict[str, Any] | None = None
    background: bool = False


class InlineScoring:
    """Every rank scores its share of the samples at the evaluation step (see Evaluator), with rank 0's G_ema."""

    def __init__(self, evaluator: Any):
        self.evaluator, self.done = evaluator, []

    def submit(self, t: Any) -> None:
        # G_ema's parameters are alike on every rank (averages of the same G); its BatchNorm statistics follow each
        # rank's own G and are made rank 0's first (a broadcast per buffer, at evaluations only).
        ddp.broadcast_buffers(t.ema.module)
        self.done.append(Scored(t.step, self.evaluator.evaluate(t.ema.module)))

    def arrived(self, wait: bool) -> list[Scored]:
        done, self.done = self.done, []
        return done

    def close(self) -> None:
        pass


class BackgroundScoring:
    """Rank 0 hands G_ema, and keeps a copy of the training state, at each evaluation step to an evaluator actor
    (eval.resources) and takes the scores when they are ready; the other ranks only take part in the consistency
    check of the state. The actor is rank 0's: it ends with the run, or with rank 0's process."""

    def __init__(self, spec: JobSpec, classes: int, rank: int, logger: Any):
        self.rank, self.logger = rank, logger
        self.pending: deque[tuple[int, Any, dict[str, Any]]] = deque()
        self.done: list[Scored] = []
        self.actor = self.described = None
        if rank == 0:
            import ray

            r = spec.eval.resources
            # DEFAULT: outside the workers' placement group, which a Tune trial's workers would place it in (their
            # bundles are full).
            self.actor = ray.remote(EvaluatorActor).options(num_cpus=r.cpus, num_gpus=r.gpus,
                                                            scheduling_strategy="DEFAULT").remote(spec, classes)
            self.described = self.actor.describe.remote()

    def submit(self, t: Any) -> None:
        ddp.broadcast_buffers(t.ema.module)
        state = t.snapshot()  # every rank proves it holds the same networks
        if self.rank != 0:
            return
        while len(self.pending) >= MAX_PENDING:
            self.take_oldest()
        state = copied(state)  # training goes on changing the networks' own tensors
        self.pending.append((t.step, self.actor.evaluate.remote(state["generator_ema"]), state))

    def arrived(self, wait: bool) -> list[Scored]:
        """The evaluations scored since the last call, in step order; with `wait`, all of those handed over."""
        import ray

        while self.pending and (wait or ray.wait([self.pending[0][1]], timeout=0)[0]):
            self.take_oldest()
        if self.described is not None and (wait or ray.wait([self.described], timeout=0)[0]):
            self.tag_classifier(self.get(self.described, "to start (data, domain classifier, G)"))
        done, self.done = self.done, []
        return done

    def take_oldest(self) -> None:
        step, ref, state = self.pending.popleft()
        self.done.append(Scored(step, self.get(ref, f"to score step {step}"), state, background=True))

    def get(self, ref: Any, what: str) -> Any:
        import ray

        try:
            return ray.get(ref, timeout=EVALUATOR_WAIT_S)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(f"eval.resources: the evaluator actor took over {EVALUATOR_WAIT_S:g} s {what}; give it "
                               "more (eval.resources), score fewer samples (eval.num_samples, eval.tstr_samples) "
                               "or evaluate in-line (eval.background false)") from None

    def tag_classifier(self, tags: dict[str, str]) -> None:
        self.described = None
        if self.logger:
            for key, value in tags.items():
                self.logger.set_tag(key, value)

    def close(self) -> None:
        if self.actor is not None:
            import ray

            ray.kill(self.actor)
            self.actor = None


class EvaluatorActor:
    """The evaluator of a run in a process of its own: the spec's data, domain classifier and G, on one GPU when it
    has one, else on the CPUs Ray gave it."""

    def __init__(self, spec: JobSpec, classes: int):
        import ray

        from orchestrator.data.sources import load_dataset, num_classes
        from orchestrator.train.networks import build_networks

        gpus = ray.get_runtime_context().get_assigned_resources().get("GPU", 0)
        device = torch.device("cuda" if gpus and torch.cuda.is_available() else "cpu")
        torch.set_num_threads(max(int(spec.eval.resources.cpus), 1))
        streamed = spec.data.source == "ray-data"
        if streamed:  # build_evaluator reads a sample of the stream's files
            from orchestrator.data import ray_data
            dataset, data_classes = None, max(len(ray_data.list_classes(spec.data.path)), 1)
        else:
            dataset = load_dataset(spec.data, spec.model)
            data_classes = num_classes(dataset)
        self.evaluator, self.tags = build_evaluator(spec, device, dataset, data_classes, classes, streamed)
        self.G = build_networks(spec, classes)[0].to(device).eval()

    def describe(self) -> dict[str, str]:
        return self.tags

    @torch.no_grad()
    def evaluate(self, generator_state: dict[str, torch.Tensor]) -> dict[str, float]:
        self.G.load_state_dict(generator_state)
        return self.evaluator.evaluate(self.G)


def copied(state: Any) -> Any:
    """`state` with every tensor in it copied to the host."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: copied(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(copied(v) for v in state)
    return state
