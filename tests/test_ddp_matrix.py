"""Distributed correctness on 2 Ray Train workers (gloo): every loss x regularizer x n_critic trains without
DDP errors and keeps ranks identical, and N workers x batch B equals 1 worker x batch N*B."""

import sys
from pathlib import Path

import pytest
import torch

from orchestrator.spec import load

REPO = Path(__file__).resolve().parents[1]

LOSSES = ["nonsaturating", "hinge", "wgan-gp", "lsgan"]
REGULARIZERS = {  # name -> spec overrides; BatchNorm D is the default, and WGAN-GP forbids it
    "batchnorm": ["model.d_norm=batch"],
    "r1": ["model.d_norm=none", "train.r1_gamma=1.0", "train.r1_every=2"],
    "spectral": ["model.d_norm=spectral"],
}
MATRIX = [(loss, reg, n_critic) for loss in LOSSES for reg in REGULARIZERS for n_critic in (1, 3)
          if not (loss == "wgan-gp" and reg == "batchnorm")]


def debug_spec(*overrides):
    return load(REPO / "jobs/debug_dcgan.yaml", ["train.steps=2", *overrides])


def train_each(config):
    """Train every spec in config["specs"] on this worker group; report per spec whether ranks stayed identical."""
    import ray.train.torch

    from orchestrator.spec import parse
    from orchestrator.train.loop import WorkerContext, train

    device = ray.train.torch.get_device()
    results = []
    for spec in config["specs"]:
        summary = train(parse(spec), WorkerContext(device=device))
        results.append({name: len(set(per_rank)) == 1 for name, per_rank in summary["parameter_digests"].items()})
    return results


def train_and_keep_final_states(config):
    """Train each spec of config["specs"]; return the networks of the final checkpoint rank 0 builds for each (as
    numpy: Ray Train refuses tensors in return values)."""
    import ray.train.torch

    from orchestrator.spec import parse
    from orchestrator.train import checkpoint
    from orchestrator.train.loop import WorkerContext, train

    finals = []
    real_build = checkpoint.build
    for spec in config["specs"]:
        states = []
        checkpoint.build = lambda **kwargs: states.append(real_build(**kwargs)) or states[-1]
        train(parse(spec), WorkerContext(device=ray.train.torch.get_device()))
        finals.append(None if not states else {
            "step": states[-1]["step"],
            **{net: {k: v.cpu().numpy() for k, v in states[-1][net].items()} for net in ("generator", "discriminator")}})
    checkpoint.build = real_build
    return finals


def fit(loop, config, tmp_path, workers=2):
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    scaling = ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 2 / max(workers, 2)})
    result = TorchTrainer(loop, train_loop_config=config, scaling_config=scaling,
                          run_config=RunConfig(storage_path=str(tmp_path))).fit()
    return result.return_value


def test_loss_regularizer_n_critic_matrix_on_two_workers(ray_session, tmp_path):
    specs = [debug_spec(f"train.loss={loss}", f"train.n_critic={n_critic}", *REGULARIZERS[reg]).to_dict()
             for loss, reg, n_critic in MATRIX]
    user_networks = ["model.generator=user_networks:MLPGenerator", "model.discriminator=user_networks:MLPDiscriminator"]
    specs.append(debug_spec(*user_networks).to_dict())
    specs.append(load(REPO / "jobs/debug_resnet.yaml", ["train.steps=2"]).to_dict())
    mixed = ["train.loss=wgan-gp", "model.d_norm=none", "train.r1_gamma=1", "train.r1_every=1", "train.channels_last=true"]
    specs += [debug_spec(f"train.precision={p}", *mixed).to_dict() for p in ("bf16", "fp16")]
    specs += [debug_spec("model.conditional=true", "train.loss=hinge", "train.r1_gamma=1", "train.r1_every=1",
                         *AUGMENTED, "train.augment.target=0.6", "tracking.metrics_every=1",
                         "train.condition_ramp=[0,2]").to_dict()]
    results = fit(train_each, {"specs": specs}, tmp_path)
    assert len(results) == len(MATRIX) + 5 == 27
    failures = [(case, r) for case, r in zip([*MATRIX, "user networks", "resnet", "bf16", "fp16", "conditional, ADA, ramp"], results) if not all(r.values())]
    assert not failures, f"ranks diverged: {failures}"


AUGMENTED = ["train.augment.policy=[color,translation,cutout]", "train.augment.p=0.5"]
EQUIVALENCE = [(loss, r1, augment) for loss in LOSSES for r1, augment in ((False, False), (True, False), (True, True))]


def equivalence_case(loss: str, r1: bool, augment: bool) -> list[str]:
    case = [f"train.loss={loss}"]
    if r1:
        case += ["train.r1_gamma=1.0", "train.r1_every=2"]
    if augment:  # ADA where the loss allows it: p moves at every step, from the signal reduced over the ranks
        adaptive = ["train.augment.target=0.6", "train.augment.images_to_full=200"] if loss != "wgan-gp" else []
        case += [*AUGMENTED, *adaptive]
    return [*case, "model.g_norm=none", "model.d_norm=none", "train.n_critic=2", "train.steps=4",
            "train.batch_size=16", "optim.g.lr=1e-3", "optim.d.lr=1e-3", "tracking.metrics_every=1"]


@pytest.mark.parametrize("workers", [2, 3])
def test_n_workers_match_one_worker_with_n_times_the_batch(ray_session, tmp_path, process_group, monkeypatch, workers):
    """For every loss, with and without lazy R1 and augmentation (no batch-dependent layers, n_critic 2): 2 workers x
    8 images must end where 1 worker x 16 images ends; so must 3 workers of an elastic group, whose shares of the
    16 are 6, 5 and 5 (each rank's loss weighed by its share). Every random quantity of a step (noise, labels,
    WGAN-GP's interpolation weights, the augmentations' draws) is drawn for the global batch and sliced per rank."""
    from orchestrator.train import checkpoint
    from orchestrator.train.loop import WorkerContext, train

    cases = [equivalence_case(*case) for case in EQUIVALENCE]
    size = f"resources.num_workers={workers if workers == 2 else [1, workers]}"
    many = fit(train_and_keep_final_states, {"specs": [debug_spec(size, *case).to_dict() for case in cases]},
               tmp_path, workers)

    real_build = checkpoint.build
    for (loss, r1, augment), case, two in zip(EQUIVALENCE, cases, many):
        states = []
        monkeypatch.setattr(checkpoint, "build", lambda **kwargs: states.append(real_build(**kwargs)) or states[-1])
        train(debug_spec("resources.num_workers=1", *case), WorkerContext(device=torch.device("cpu")))
        one = states[-1]
        assert two["step"] == one["step"] == 4
        for net in ("generator", "discriminator"):
            assert set(two[net]) == set(one[net])
            for name, reference in one[net].items():
                torch.testing.assert_close(torch.tensor(two[net][name]), reference, rtol=1e-4, atol=1e-6,
                                           msg=lambda m: f"{case}: {net}.{name}: {m}")
        # the comparison means something: training moved the weights far beyond the tolerance
        from orchestrator.train.networks import build_networks

        torch.manual_seed(0)  # as the workers seed before building
        initial_G, _ = build_networks(debug_spec(*case))
        moved = max((p - one["generator"][n]).abs().max().item() for n, p in initial_G.state_dict().items())
        assert moved > 1e-3, case


def train_recording_evaluated_networks(config):
    """Train one spec; return, per evaluation, every rank's digest of the G_ema it drew its samples with."""
    import ray.train.torch

    from orchestrator.distributed import collectives, ddp
    from orchestrator.evaluate.evaluator import Evaluator
    from orchestrator.spec import parse
    from orchestrator.train.loop import WorkerContext, train

    seen = []
    real_evaluate = Evaluator.evaluate

    def recording(self, G):
        seen.append(collectives.gather_objects(ddp.state_digest(G)))
        return real_evaluate(self, G)

    Evaluator.evaluate = recording
    try:
        train(parse(config["spec"]), WorkerContext(device=ray.train.torch.get_device()))
    finally:
        Evaluator.evaluate = real_evaluate
    return seen


def test_every_rank_evaluates_the_same_generator(ray_session, tmp_path, mnist_classifier):
    """G has BatchNorm, whose statistics are each rank's own during training: the shares of an evaluation's samples
    must still be drawn by one network, parameters and buffers alike, on every rank."""
    _, cache = mnist_classifier
    spec = debug_spec("train.steps=4", "model.g_norm=batch", "eval.every=2", "eval.num_samples=40",
                      f"eval.cache_dir={cache}", 'eval.inception="off"')
    seen = fit(train_recording_evaluated_networks, {"spec": spec.to_dict()}, tmp_path)
    assert len(seen) == 2 and all(len(per_rank) == 2 for per_rank in seen)
    assert all(len(set(per_rank)) == 1 for per_rank in seen), seen
