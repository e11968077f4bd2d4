"""cluster.yaml (AWS) and its on-premises variant validate against Ray's own cluster-config schema, as
`ray up` fills and checks them (no cloud is contacted)."""

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [REPO / "cluster.yaml", REPO / "docs/cluster-onprem.yaml"]


def prepared(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_cluster_config_validates_against_rays_schema(path):
    config = prepared(yaml.safe_load(path.read_text()))
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head, "the job server stays on the head's loopback (SSH to reach it)"
    assert "mlflow server" in head and "--backend-store-uri" in head and "--artifacts-destination" in head
    assert "MLFLOW_TRACKING_URI=http://" in head and "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in workers
    assert any("pip install" in c and "$HOME/ganorch[gpu]" in c for c in config["setup_commands"])
    assert config["file_mounts"] == {"~/ganorch": ".", "~/.ray/auth_token": "~/.ray/auth_token"}
    # Ray's token and MLflow's users on every node: nothing in the file itself is a secret.
    assert head.count("RAY_AUTH_MODE=token ") == 1 and "RAY_AUTH_MODE=token " in workers
    assert "--app-name basic-auth" in head and "MLFLOW_AUTH_CONFIG_PATH=" in head
    setup = " ".join(config["head_setup_commands"])
    assert "[server]" in setup and "auth.ini" in setup and "password =" not in setup


def test_the_aws_cluster_has_a_cpu_head_and_autoscaling_spot_gpu_workers():
    config = prepared(yaml.safe_load((REPO / "cluster.yaml").read_text()))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    (worker,) = [t for name, t in types.items() if name != config["head_node_type"]]
    assert worker["min_workers"] == 0 < worker["max_workers"]
    assert worker["node_config"]["InstanceType"].startswith("g5.")
    assert worker["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}


def test_a_mistake_in_a_cluster_config_is_caught():
    from jsonschema import ValidationError

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["available_node_types"]["gpu_worker"]["min_worker"] = 0
    with pytest.raises(ValidationError, match="'min_worker' was unexpected"):
        prepared(config)


def test_the_example_job_in_cluster_yaml_is_an_elastic_group_that_validates():
    import shlex

    from orchestrator.spec import load

    lines = (REPO / "cluster.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#   ganorch submit"))
    command = " ".join(line.lstrip("#").strip().rstrip("\\") for line in lines[start:start + 2])
    words = shlex.split(command)
    sets = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    spec = load(REPO / words[2], sets)
    assert spec.resources.elastic and spec.resources.use_gpu and (spec.resources.min_workers,
                                                                  spec.resources.max_workers) == (1, 8)
