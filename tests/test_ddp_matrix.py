"""Distributed correctness on 2 Ray Train workers (gloo): every loss x regularizer x n_critic trains without
DDP errors and keeps ranks identical, and N workers x batch B equals 1 worker x batch N*B."""

import sys
from pathlib import Path

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


def train_and_keep_final_state(config):
    """Train one spec; return the networks of the final checkpoint rank 0 builds (as numpy: Ray Train
    refuses tensors in return values)."""
    import ray.train.torch

    from orchestrator.spec import parse
    from orchestrator.train import checkpoint
    from orchestrator.train.loop import WorkerContext, train

    states = []
    real_build = checkpoint.build
    checkpoint.build = lambda **kwargs: states.append(real_build(**kwargs)) or states[-1]
    train(parse(config["spec"]), WorkerContext(device=ray.train.torch.get_device()))
    if not states:
        return None
    final = states[-1]
    return {"step": final["step"],
            **{net: {k: v.cpu().numpy() for k, v in final[net].items()} for net in ("generator", "discriminator")}}


def fit(loop, config, tmp_path):
    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    result = TorchTrainer(loop, train_loop_config=config, scaling_config=ScalingConfig(num_workers=2),
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
    specs += [debug_spec("model.conditional=true", "train.loss=hinge", "train.r1_gamma=1", "train.r1_every=1").to_dict()]
    results = fit(train_each, {"specs": specs}, tmp_path)
    assert len(results) == len(MATRIX) + 5 == 27
    failures = [(case, r) for case, r in zip([*MATRIX, "user networks", "resnet", "bf16", "fp16", "conditional"], results) if not all(r.values())]
    assert not failures, f"ranks diverged: {failures}"


def test_n_workers_match_one_worker_with_n_times_the_batch(ray_session, tmp_path, process_group, monkeypatch):
    """No batch-dependent layers, n_critic 2: 2 workers x 8 images must end where 1 worker x 16 images ends."""
    from orchestrator.train import checkpoint
    from orchestrator.train.loop import WorkerContext, train

    common = ["model.g_norm=none", "model.d_norm=none", "train.n_critic=2", "train.steps=4",
              "train.batch_size=16", "optim.g.lr=1e-3", "optim.d.lr=1e-3"]
    two_workers = fit(train_and_keep_final_state, {"spec": debug_spec("resources.num_workers=2", *common).to_dict()},
                      tmp_path)

    states = []
    real_build = checkpoint.build
    monkeypatch.setattr(checkpoint, "build", lambda **kwargs: states.append(real_build(**kwargs)) or states[-1])
    train(debug_spec("resources.num_workers=1", *common), WorkerContext(device=torch.device("cpu")))
    one_worker = states[-1]

    assert two_workers["step"] == one_worker["step"] == 4
    for net in ("generator", "discriminator"):
        assert set(two_workers[net]) == set(one_worker[net])
        for name, reference in one_worker[net].items():
            torch.testing.assert_close(torch.tensor(two_workers[net][name]), reference, rtol=1e-4, atol=1e-6,
                                       msg=lambda m: f"{net}.{name}: {m}")
    # the comparison means something: training moved the weights far beyond the tolerance
    from orchestrator.train.networks import build_networks

    torch.manual_seed(0)  # as the workers seed before building
    initial_G, _ = build_networks(debug_spec(*common))
    moved = max((p - one_worker["generator"][n]).abs().max().item() for n, p in initial_G.state_dict().items())
    assert moved > 1e-3
