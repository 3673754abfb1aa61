"""Multi-GPU training deployment: the Kubernetes Job (deploy/k8s/training) validated like the
service's manifests, and the accelerate launch configs read by accelerate itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import REPO, checkov, kustomize
from tests.deploy.test_k8s import K8S_VERSIONS


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return kustomize("deploy/k8s/training", tmp_path_factory.mktemp("k8s-training"))


@pytest.fixture(scope="module")
def resources(rendered: Path) -> dict[tuple[str, str], Any]:
    docs = [d for d in yaml.safe_load_all(rendered.read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def test_training_resources_match_the_api_schema(resources: dict[tuple[str, str], Any]) -> None:
    import kubernetes_validate

    versions = [kubernetes_validate.latest_version() if v == "latest" else v for v in K8S_VERSIONS]
    for doc in resources.values():
        for version in versions:
            kubernetes_validate.validate(doc, version, strict=True)
        assert doc["metadata"]["namespace"] == "confidence"
    assert ("Job", "confidence-train") in resources


def test_training_checkov_policies_pass(rendered: Path) -> None:
    result = checkov(rendered, "kubernetes")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_job_runs_one_process_per_gpu_into_the_served_adapter_volume(
    resources: dict[tuple[str, str], Any],
) -> None:
    pod = resources[("Job", "confidence-train")]["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    command = main["command"]
    assert command[0] == "torchrun" and command[command.index("--no-python") + 1 :][:2] == [
        "confidence",
        "train",
    ]
    gpus = main["resources"]["limits"]["nvidia.com/gpu"]
    assert f"--nproc_per_node={gpus}" in command
    # No --version: the job exports the next free version instead of colliding with a shipped one.
    assert not [arg for arg in command if arg.startswith("--version")]
    options = dict(arg.split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    adapters = mounts[options["--export_root"]]
    assert not adapters.get("readOnly")
    assert volumes[adapters["name"]]["persistentVolumeClaim"]["claimName"] == "confidence-adapters"
    runs = mounts[options["--runs_root"]]
    assert "persistentVolumeClaim" in volumes[runs["name"]]  # a retried attempt resumes its run
    assert Path(options["--train_files"]).parent.as_posix() in mounts


@pytest.mark.parametrize("name", ["accelerate_ddp.yaml", "accelerate_fsdp.yaml"])
def test_accelerate_configs_load_with_accelerate(name: str) -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(REPO / "deploy/training" / name))
    assert config.num_processes > 1 and config.mixed_precision == "bf16"
    if "fsdp" in name:
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # one PEFT file to export
