"""`ganorch run JOB --resume auto|PATH|RUN_ID`: stopping at step k and resuming to step n gives the run that was
never stopped; what cannot be resumed is refused before a run starts."""

import re
from pathlib import Path

import pytest
import torch

from orchestrator.cli import main
from orchestrator.spec import load
from orchestrator.track import store
from orchestrator.train import checkpoint

REPO = Path(__file__).resolve().parents[1]
JOB = str(REPO / "jobs/debug_dcgan.yaml")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["run", JOB, *args])
    out, err = capsys.readouterr()
    return code, out, err


def final_checkpoint(uri: str, run_id: str, tmp_path: Path) -> dict:
    c = store.client(uri)
    artifact = c.get_run(run_id).data.tags["ganorch.checkpoint"]
    folder = c.download_artifacts(run_id, artifact.rpartition("/")[0], str(tmp_path / run_id))
    return checkpoint.load(folder)


def test_a_run_stopped_at_k_and_resumed_to_n_is_the_run_never_stopped(ray_session, mlflow_store, tmp_path, capsys):
    # ADA's p moves at every step (by 32/100 real images, up or down from 0.5): the checkpoint must carry it
    augment = ["train.augment.policy=[color,translation,cutout]", "train.augment.target=0.6",
               "train.augment.images_to_full=100", "train.augment.p=0.5"]
    common = ["--set", f"tracking.storage_path={tmp_path / 'ray_storage'}", "--set", "tracking.checkpoint_every=3",
              "--set", "tracking.metrics_every=1", *(arg for key in augment for arg in ("--set", key))]
    code, out, err = run_cli(capsys, *common, "--set", "train.steps=6")
    assert code == 0, err
    whole = re.search(r"MLflow run ([0-9a-f]{32})", out).group(1)
    code, out, err = run_cli(capsys, *common, "--set", "train.steps=3")
    assert code == 0, err
    stopped = re.search(r"MLflow run ([0-9a-f]{32})", out).group(1)

    code, out, err = run_cli(capsys, *common, "--set", "train.steps=6", "--resume", "auto")
    assert code == 0, err
    assert "resuming from step 3: run debug_dcgan" in out and f"(MLflow run {stopped} goes on)" in out, out
    assert f"MLflow run {stopped};" in out  # the run that stopped went on

    expected, resumed = final_checkpoint(mlflow_store, whole, tmp_path), final_checkpoint(mlflow_store, stopped, tmp_path)
    assert resumed["step"] == expected["step"] == 6
    for part in ("generator", "generator_ema", "discriminator"):
        for name, tensor in expected[part].items():
            assert torch.equal(resumed[part][name], tensor), f"{part}.{name}"
    for part in ("optimizer_g", "optimizer_d"):
        for index, moments in expected[part]["state"].items():
            assert all(torch.equal(resumed[part]["state"][index][k], v) for k, v in moments.items()), part
    c = store.client(mlflow_store)
    assert [m.step for m in c.get_metric_history(stopped, "loss_d")] == list(range(1, 7))
    for name in ("loss_d", "augment_p", "d_real_sign"):
        history = [m.value for m in sorted(c.get_metric_history(stopped, name), key=lambda m: m.step)]
        assert history == [m.value for m in sorted(c.get_metric_history(whole, name), key=lambda m: m.step)], name
    assert len({m.value for m in c.get_metric_history(whole, "augment_p")}) > 1
    tags = c.get_run(stopped).data.tags
    assert tags["ganorch.restarts"] == "1" and tags["ganorch.restart.1"].startswith("resumed (ganorch run --resume)")


@pytest.fixture
def saved_checkpoint(tmp_path) -> Path:
    """A real checkpoint of debug_dcgan at step 3."""
    from orchestrator.train.networks import build_networks

    spec = load(JOB)
    G, D = build_networks(spec)
    state = checkpoint.build(G=G, G_ema=G, D=D, opt_g=torch.optim.Adam(G.parameters()),
                             opt_d=torch.optim.Adam(D.parameters()), step=3, images_seen=96, spec=spec.to_dict())
    (tmp_path / "saved").mkdir()
    return checkpoint.save(state, tmp_path / "saved")


@pytest.mark.parametrize("resume, overrides, message", [
    ("no/such/file.pt", [], "--resume no/such/file.pt: no such checkpoint file, and not an MLflow run id"),
    ("0123456789abcdef0123456789abcdef", [], "--resume 0123456789abcdef0123456789abcdef: no MLflow run with this id"),
    ("{saved}", ["model.g_width=8"], "--resume: the checkpoint's networks have model.g_width 4, the spec has 8"),
    ("{saved}", ["train.steps=3"], "--resume: the checkpoint is at step 3 and train.steps is 3: nothing left"),
    ("{saved}", ["data.labels_per_class=40"], "--resume: the checkpoint's G trained on data.labels_per_class None, "
                                              "the spec has 40"),
    ("{kept}", ["data.labels_per_class=40", "seed=1"], "--resume: the checkpoint's G trained on the 40 images per "
                                                       "class of seed 0, the spec has seed 1"),
    ("{damaged}", [], "checkpoint.pt: corrupted or truncated"),
])
def test_what_cannot_be_resumed_exits_2_before_anything_starts(mlflow_store, saved_checkpoint, capsys, resume,
                                                               overrides, message):
    damaged = saved_checkpoint.parent.parent / "damaged"
    damaged.mkdir()
    for file in saved_checkpoint.parent.iterdir():
        (damaged / file.name).write_bytes(file.read_bytes())
    (damaged / "checkpoint.pt").write_bytes((damaged / "checkpoint.pt").read_bytes()[:-10])
    kept = saved_checkpoint.parent.parent / "kept"
    kept.mkdir()
    state = checkpoint.load(saved_checkpoint)
    state["spec"]["data"]["labels_per_class"] = 40
    checkpoint.save(state, kept)
    target = resume.format(saved=saved_checkpoint.parent, damaged=damaged, kept=kept)
    # The dry run checks as the run does (test_cli compares the two), without starting Ray in this process
    code = main(["run", JOB, "--dry-run", "--resume", target, *(a for o in overrides for a in ("--set", o))])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not Path("mlflow.db").exists() or not store.client(mlflow_store).search_experiments(
        filter_string="name = 'debug_dcgan'")  # nothing was started


# Resuming on another kind of device. A CUDA generator's state is its seed and offset (16 bytes), a CPU one's the
# Mersenne Twister's (5,056): neither fits the other, so the noise is re-seeded from the seed and the step.
CUDA_GENERATOR_STATE = torch.tensor([123, 0], dtype=torch.int64).view(torch.uint8)


def train_on(device: torch.device, steps: int, resume: dict | None = None) -> dict[int, dict]:
    """debug_dcgan in this process (one worker) on `device`: its checkpoints by step, as they load from disk."""
    from orchestrator.train.checkpoint import load as load_checkpoint
    from orchestrator.train.loop import WorkerContext, train

    states = {}

    def report(metrics, checkpoint=None):
        states[metrics["step"]] = load_checkpoint(checkpoint.path)

    train(load(JOB, ["resources.num_workers=1", f"train.steps={steps}"]), WorkerContext(device, resume=resume),
          report=report)
    return states


def same_state(a: dict, b: dict) -> bool:
    return all(torch.equal(a[net][k].cpu(), b[net][k].cpu()) for net in ("generator", "generator_ema", "discriminator")
               for k in a[net])


def test_a_gpu_checkpoint_resumes_on_cpu(process_group, tmp_path):
    """A checkpoint whose RNG states are a GPU's (the CUDA RNG's, a CUDA noise generator's) continues on CPU, the
    noise re-seeded from the seed and the step: the same steps at every resume, and the run says so."""
    from orchestrator.train import resume

    state = train_on(torch.device("cpu"), 3)[3]
    state["loop"]["noise_rng"], state["loop"]["cuda_rng"] = CUDA_GENERATOR_STATE, CUDA_GENERATOR_STATE.clone()
    saved = checkpoint.save(state, tmp_path)
    state = checkpoint.load(saved)
    # Each from the file: the optimizers' moments are the loaded state's tensors, which training updates in place.
    first, again = (train_on(torch.device("cpu"), 4, resume=checkpoint.load(saved))[4] for _ in range(2))
    assert first["step"] == 4 and same_state(first, again)
    assert resume.device_change(state, torch.device("cpu")) == (
        "taken on cuda, resumed on cpu: the noise generator was re-seeded from the seed and step 3, a cuda "
        "generator's state does not fit a cpu one")
    assert resume.device_change(state, torch.device("cuda", 0)) is None


def test_the_run_says_its_checkpoint_was_taken_on_another_device(monkeypatch):
    from orchestrator.train import rank0_logger
    from orchestrator.train.loop import WorkerContext

    class Tags(dict):
        def __init__(self, *args, held=False, **kwargs):
            super().__init__()
            self.events = [f"held {held}"]

        set_tag = dict.__setitem__

        def resuming(self, step):
            self.events.append(f"resuming {step}")

        def release(self):
            self.events.append("release")

    monkeypatch.setattr(rank0_logger, "RunLogger", Tags)
    state = {"step": 3, "loop": {"noise_rng": CUDA_GENERATOR_STATE, "cuda_rng": CUDA_GENERATOR_STATE}}
    tags = rank0_logger.open_logger(WorkerContext(torch.device("cpu"), resume=state, resumed_from="ckpt"))
    # Nothing of this start is sent before what an earlier start kept: resuming sends that first.
    assert tags.events == ["held True", "resuming 3", "release"]
    assert tags["ganorch.resumed_from"] == ("step 3: ckpt (taken on cuda, resumed on cpu: the noise generator was "
                                            "re-seeded from the seed and step 3, a cuda generator's state does not "
                                            "fit a cpu one)")


class CudaLikeGenerator:
    """Where there is no GPU, a stand-in for torch.Generator(device='cuda'): its state has a CUDA generator's size,
    and like one it refuses a state of another size."""

    def __init__(self):
        self.seed = None

    def get_state(self) -> torch.Tensor:
        return CUDA_GENERATOR_STATE.clone()

    def set_state(self, state: torch.Tensor) -> None:
        if state.numel() != CUDA_GENERATOR_STATE.numel():
            raise RuntimeError(f"Expected a ByteTensor of size {CUDA_GENERATOR_STATE.numel()}, got {state.numel()}")

    def manual_seed(self, seed: int) -> "CudaLikeGenerator":
        self.seed = seed
        return self


def test_a_cpu_checkpoint_restores_its_rng_on_a_gpu():
    """A CPU checkpoint's noise on a GPU: re-seeded from the seed and the step, alike at every resume; the CPU RNG's
    state restored as it was."""
    from orchestrator.train import resume

    cpu = torch.device("cpu")
    state = {"step": 3, "spec": {"seed": 0}, "loop": resume.loop_state([], torch.Generator().manual_seed(1), None, cpu)}
    expected_cpu_draw = torch.rand(3)
    gpu = torch.device("cuda", 0)
    draws = []
    for _ in range(2):
        noise = torch.Generator(device=gpu) if torch.cuda.is_available() else CudaLikeGenerator()
        resume.restore_rng(state, noise, gpu)
        assert torch.equal(torch.rand(3), expected_cpu_draw)
        draws.append(torch.rand(4, generator=noise, device=gpu).cpu() if torch.cuda.is_available() else noise.seed)
    assert draws[0] is not None and (torch.equal(*draws) if torch.cuda.is_available() else draws[0] == draws[1])
    assert resume.device_change(state, gpu).startswith("taken on cpu, resumed on cuda: the noise generator was "
                                                       "re-seeded from the seed and step 3")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: moves checkpoints between CPU and CUDA")
def test_checkpoints_move_between_cpu_and_gpu(process_group, tmp_path):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    for taken_on, resumed_on in ((cpu, gpu), (gpu, cpu)):
        saved = checkpoint.save(train_on(taken_on, 3)[3], tmp_path)
        first, again = (train_on(resumed_on, 6, resume=checkpoint.load(saved))[6] for _ in range(2))
        assert first["step"] == 6 and same_state(first, again), (taken_on, resumed_on)


def test_an_optimizer_saved_before_fused_adam_resumes_fused_and_skips_on_the_device():
    """A checkpoint from before fused optimizers says fused: None; the resumed optimizer must still be fused (its
    step counters placed for the fused kernel), or it could not take a step's skip as a device tensor."""
    from orchestrator.train import resume
    from orchestrator.train.build import adam
    from orchestrator.train.networks import build_networks
    from orchestrator.train.phases import step_unless

    spec = load(JOB)
    G, D = build_networks(spec)
    old_g, old_d = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())  # not fused, as before
    for net, optimizer in ((G, old_g), (D, old_d)):
        for p in net.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()
    state = {"generator_ema": G.state_dict(), "optimizer_g": old_g.state_dict(), "optimizer_d": old_d.state_dict()}
    assert state["optimizer_g"]["param_groups"][0]["fused"] is None
    opt_g, opt_d = adam(G, spec.optim.g), adam(D, spec.optim.d)
    resume.restore_training(state, G, opt_g, opt_d, [], spec)
    assert all(group["fused"] for o in (opt_g, opt_d) for group in o.param_groups)
    before = [p.detach().clone() for p in G.parameters()]
    step_unless(opt_g, torch.tensor(True))  # skipped: neither the weights nor the step counters move
    assert all(torch.equal(a, p) for a, p in zip(before, G.parameters()))
    assert all(float(s["step"]) == 1 for s in opt_g.state.values())
    step_unless(opt_g, torch.tensor(False))
    assert all(float(s["step"]) == 2 for s in opt_g.state.values())
