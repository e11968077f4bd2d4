"""Launch helpers that need no cluster."""

from orchestrator.launch import resources_line, storage_path
from orchestrator.spec import parse


def test_storage_path_is_made_absolute_unless_a_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = lambda path: parse({"name": "t", "tracking": {"storage_path": path}})  # noqa: E731
    assert storage_path(spec("runs")) == str(tmp_path / "runs")
    assert storage_path(spec("s3://bucket/runs")) == "s3://bucket/runs"
    assert storage_path(spec(None)) is None


def test_resources_line_counts_gpus_only_with_use_gpu():
    cpu = parse({"name": "t", "resources": {"num_workers": 4, "gpus_per_worker": 0.5}})
    gpu = parse({"name": "t", "resources": {"num_workers": 4, "use_gpu": True, "gpus_per_worker": 0.5}})
    assert resources_line(cpu).startswith("4 worker(s) x (1 CPU, 0 GPU) = 4 CPU, 0 GPU; backend gloo")
    assert resources_line(gpu).startswith("4 worker(s) x (1 CPU, 0.5 GPU) = 4 CPU, 2 GPU; backend nccl")
