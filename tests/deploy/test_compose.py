"""docker-compose.yml, as Debian's docker-compose 1.29 reads it (`docker-compose config`)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import REPO, run, served_default, tool

REQUIRED_ENV = {
    "GATEWAY_API_KEYS_FILE": str(REPO / "deploy/gateway/api-keys.example.map"),
    "POSTGRES_PASSWORD": "compose-test-password",
    "FEEDBACK_DB_PASSWORD": "compose-test-app-password",
    "GRAFANA_ADMIN_PASSWORD": "compose-test-admin",
}


def compose_config(*args: str, env: dict[str, str] | None = None) -> Any:
    clean = {k: v for k, v in os.environ.items() if k not in REQUIRED_ENV and not k.startswith("COMPOSE_")}
    result = run(
        [tool("docker-compose"), "-f", str(REPO / "docker-compose.yml"), *args, "config"],
        env={**clean, **(env or REQUIRED_ENV)},
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def config() -> Any:
    return compose_config()


def test_stack_has_every_part(config: Any) -> None:
    assert set(config["services"]) == {
        "gateway", "confidence", "volumes-init", "prometheus", "grafana", "postgres", "train", "recalibrate",
    }  # fmt: skip
    assert {"adapters", "model-cache", "feedback-db"} <= set(config["volumes"])


def test_train_is_an_optional_profile(config: Any) -> None:
    assert config["services"]["train"]["profiles"] == ["train"]
    optional = {"train", "recalibrate"}
    assert all("profiles" not in s for name, s in config["services"].items() if name not in optional)
    assert "train" in compose_config("--profile", "train")["services"]


def test_recalibration_is_an_optional_profile_that_never_promotes(config: Any) -> None:
    job = compose_config("--profile", "recalibrate")["services"]["recalibrate"]
    assert job["profiles"] == ["recalibrate"]
    script = " ".join(job["command"])
    assert "confidence recalibrate" in script and "--report" in script and "--promote" not in script
    assert job["environment"]["RECALIBRATE_ADAPTER"] == served_default()  # what the service serves
    # It writes candidates into the volume the service reads (read-only there).
    assert "adapters:/var/lib/confidence/adapters:rw" in job["volumes"]
    assert (
        job["environment"]["CONFIDENCE_FEEDBACK_DB_URL"]
        == config["services"]["confidence"]["environment"]["CONFIDENCE_FEEDBACK_DB_URL"]
    )


def test_secrets_have_no_defaults() -> None:
    for missing in REQUIRED_ENV:
        env = {k: v for k, v in REQUIRED_ENV.items() if k != missing}
        clean = {k: v for k, v in os.environ.items() if k not in REQUIRED_ENV}
        result = run(
            [tool("docker-compose"), "-f", str(REPO / "docker-compose.yml"), "config"], env={**clean, **env}
        )
        assert result.returncode != 0 and missing in result.stderr, (missing, result.stderr)


def test_only_the_gateway_is_exposed_to_the_network(config: Any) -> None:
    services = config["services"]
    assert "ports" not in services["confidence"] and "ports" not in services["postgres"]
    (gateway_port,) = services["gateway"]["ports"]
    assert gateway_port["target"] == 8080
    for name in ("prometheus", "grafana"):
        assert all(str(p).startswith("127.0.0.1:") for p in services[name]["ports"]), name


def test_service_wiring(config: Any) -> None:
    service = config["services"]["confidence"]
    env = service["environment"]
    assert env["CONFIDENCE_FEEDBACK_DB_URL"].startswith(
        "postgresql://confidence_app:compose-test-app-password@postgres:5432/"
    )
    assert service["build"]["target"] == "cpu"
    assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Replicas start only after one container populated the shared volumes (Docker's copy
    # of the image's files into a new volume races when two containers do it at once).
    assert service["depends_on"]["volumes-init"]["condition"] == "service_completed_successfully"
    init = config["services"]["volumes-init"]
    assert init["image"] == service["image"] and init["build"] == service["build"]
    assert mount_targets(init) == {"/var/lib/confidence/adapters", "/var/cache/confidence"}
    # Grace beyond the drain timeout, so SIGKILL never cuts a draining replica short.
    grace = int(service["stop_grace_period"].rstrip("s"))
    assert grace > float(env["CONFIDENCE_DRAIN_TIMEOUT_S"])
    mounts = {m.split(":")[1]: m for m in service["volumes"]}
    assert mounts["/var/lib/confidence/adapters"] == "adapters:/var/lib/confidence/adapters:ro"
    train_mounts = {m.split(":")[1]: m for m in config["services"]["train"]["volumes"] if isinstance(m, str)}
    assert train_mounts["/var/lib/confidence/adapters"].endswith(":rw")
    train = config["services"]["train"]
    assert train["command"][:2] == ["confidence", "train"]
    # vLLM's engine refuses to start with Docker's default 64 MiB /dev/shm (the temperature fit).
    assert service["shm_size"] == train["shm_size"] == "1gb"
    assert train["command"][train["command"].index("--export_root") + 1] == "/var/lib/confidence/adapters"


def test_gateway_runs_the_tested_config(config: Any) -> None:
    gateway = config["services"]["gateway"]
    mounts = [m for m in gateway["volumes"] if isinstance(m, str)]
    assert f"{REPO}/deploy/gateway/confidence.conf:/etc/nginx/conf.d/default.conf:ro" in mounts
    assert f"{REPO}/deploy/gateway/upstream.conf:/etc/nginx/confidence/upstream.conf:ro" in mounts
    (keys,) = [m for m in gateway["volumes"] if isinstance(m, dict)]
    assert keys["target"] == "/etc/nginx/confidence/api-keys.map" and keys["read_only"]


def test_bind_mounted_files_exist(config: Any) -> None:
    for service in config["services"].values():
        for mount in service.get("volumes", []):
            source = mount["source"] if isinstance(mount, dict) else mount.split(":")[0]
            if not source.startswith(str(REPO)):
                continue
            relative = source[len(str(REPO)) + 1 :]
            if relative == "data":  # the train profile's input, the operator's to provide
                continue
            assert (REPO / relative).exists(), relative


def mount_targets(service: Any) -> set[str]:
    """Container paths of a service's mounts (short "src:target[:mode]" or long syntax)."""
    return {v["target"] if isinstance(v, dict) else v.split(":")[1] for v in service["volumes"]}


def test_containers_are_hardened(config: Any) -> None:
    for name, service in config["services"].items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        if name != "train":
            assert service.get("mem_limit") and service.get("pids_limit"), name


def test_the_service_uses_its_own_database_role(config: Any) -> None:
    url = config["services"]["confidence"]["environment"]["CONFIDENCE_FEEDBACK_DB_URL"]
    assert url.startswith("postgresql://confidence_app:")
    mounts = mount_targets(config["services"]["postgres"])
    assert {"/docker-entrypoint-initdb.d", "/etc/confidence/app-role.sql"} <= mounts


def test_tls_option_publishes_https_with_the_certificate() -> None:
    tls_env = {**REQUIRED_ENV, "GATEWAY_TLS_CERT": "/etc/hostname", "GATEWAY_TLS_KEY": "/etc/hostname"}
    config = compose_config("-f", str(REPO / "docker-compose.tls.yml"), env=tls_env)
    gateway = config["services"]["gateway"]
    assert {p["target"] for p in gateway["ports"]} == {8080, 8443}
    targets = mount_targets(gateway)
    assert {"/etc/nginx/confidence/tls/tls.conf", "/etc/nginx/confidence/tls/cert.pem"} <= targets


OFFLINE_OVERRIDE = REPO / "deploy/offline/docker-compose.offline.yml"
OFFLINE_STAND_INS = {"gateway", "prometheus", "postgres"}


def comparable(service: dict[str, Any]) -> dict[str, Any]:
    """A service without what the override may change, its volumes in a fixed order (merging
    reorders them)."""
    out = {k: v for k, v in service.items() if k not in ("image", "build")}
    out["volumes"] = sorted(json.dumps(v, sort_keys=True) for v in service.get("volumes", []))
    return out


def test_offline_override_swaps_only_the_public_images() -> None:
    """deploy/offline: each public image becomes a local build from Debian's packages; its
    config files, volumes, command, environment and health check stay docker-compose.yml's."""
    env = {**REQUIRED_ENV, "BASE_IMAGE": "local/bookworm:test"}
    config = compose_config(env=env)
    merged = compose_config("-f", str(OFFLINE_OVERRIDE), env=env)
    assert set(merged["services"]) == set(config["services"])
    for name, service in merged["services"].items():
        original = config["services"][name]
        if name in OFFLINE_STAND_INS:
            assert service["image"] != original["image"]
            assert service["build"] == {
                "context": str(REPO / "deploy/offline"),
                "target": name,
                "network": "host",
                "args": {"BASE_IMAGE": "local/bookworm:test"},
            }
        elif "build" in service:
            # The service images only gain the host network for their package downloads.
            assert service["build"] == {**original["build"], "network": "host"}, name
            assert service["image"] == original["image"]
        else:
            assert "image" in service and service["image"] == original["image"], name
        assert comparable(service) == comparable(original), name


def test_offline_override_needs_a_base_image() -> None:
    clean = {k: v for k, v in os.environ.items() if k not in REQUIRED_ENV and k != "BASE_IMAGE"}
    files = ["-f", str(REPO / "docker-compose.yml"), "-f", str(OFFLINE_OVERRIDE)]
    result = run([tool("docker-compose"), *files, "config"], env={**clean, **REQUIRED_ENV})
    assert result.returncode != 0 and "BASE_IMAGE" in result.stderr, result.stderr


def test_offline_stand_ins_lint_clean() -> None:
    dockerfile = REPO / "deploy/offline/Dockerfile"
    result = run([tool("hadolint"), "--failure-threshold", "info", str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr
