"""Launch helpers that need no cluster."""

from orchestrator.spec import parse
from orchestrator.train.trainer import for_workers, resources_line


def test_local_paths_are_made_absolute_for_workers_unless_a_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def spec(path):
        return parse({"name": "t", "tracking": {"storage_path": path}, "data": {"source": "ray-data", "path": path}})

    local = for_workers(spec("runs"))
    assert local.tracking.storage_path == local.data.path == str(tmp_path / "runs")
    assert spec("runs").data.path == "runs", "the spec given is left as it was"
    remote = for_workers(spec("s3://bucket/runs"))
    assert remote.tracking.storage_path == remote.data.path == "s3://bucket/runs"
    unset = for_workers(parse({"name": "t"}))
    assert unset.tracking.storage_path is None and unset.data.path is None and unset.eval.cache_dir is None
    evaluated = for_workers(parse({"name": "t", "eval": {"cache_dir": "cache", "inception_weights": "w.pth"}}))
    assert evaluated.eval.cache_dir == str(tmp_path / "cache")
    assert evaluated.eval.inception_weights == str(tmp_path / "w.pth")


def test_resources_line_counts_gpus_only_with_use_gpu():
    cpu = parse({"name": "t", "resources": {"num_workers": 4}})
    gpu = parse({"name": "t", "resources": {"num_workers": 4, "use_gpu": True, "gpus_per_worker": 0.5}})
    assert resources_line(cpu).startswith("4 worker(s) x (1 CPU, 0 GPU) = 4 CPU, 0 GPU; backend gloo")
    assert resources_line(gpu).startswith("4 worker(s) x (1 CPU, 0.5 GPU) = 4 CPU, 2 GPU; backend nccl")
    streamed = parse({"name": "t", "data": {"source": "ray-data", "path": "images"}})
    assert "Ray Data decodes on the cluster's other CPUs" in resources_line(streamed)
