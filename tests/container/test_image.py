"""The `cpu` image built from this checkout and run for real with no network at all:
/ready turns 200, /generate answers with the shipped adapter's confidence, SIGTERM drains
the in-flight request and the container exits 0.

Slow on first run (the image installs vLLM and converts the embedded model); later runs
reuse Docker's layer cache. Select with `-m container`, leave out with `-m "not container"`.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.container.conftest import CLIENT, REPO, Container, build_image, docker, docker_cli

pytestmark = pytest.mark.container

IMAGE = "confidence-service:test-cpu"
READY_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def cpu_image(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    log = tmp_path_factory.mktemp("build") / "build.log"
    build_image(REPO, target="cpu", tag=IMAGE, build_args={"BASE_IMAGE": base_image}, log=log)
    return IMAGE


@pytest.fixture(scope="module")
def container(cpu_image: str) -> Iterator[Container]:
    name = f"confidence-test-{uuid.uuid4().hex[:8]}"
    # No network at all, and the root filesystem read-only as in the Kubernetes manifests:
    # only the paths the service writes are writable.
    docker(
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "none",
        "--read-only",
        "--shm-size",
        "1g",
        "--tmpfs",
        "/tmp:rw,exec,size=2g",
        "--tmpfs",
        "/home/confidence:rw,exec,uid=10001,gid=10001",
        "--tmpfs",
        "/var/cache/confidence:rw,exec,uid=10001,gid=10001,size=2g",
        # The drain test's 256-token answer must end inside the drain window; on a busy
        # 2-core machine it took over the 30 s default once (cancelled -> 500).
        "-e",
        "CONFIDENCE_DRAIN_TIMEOUT_S=300",
        cpu_image,
    )
    try:
        yield Container(name)
    finally:
        docker("rm", "-f", name, check=False)


def test_image_runs_as_an_unprivileged_user_with_a_health_check(cpu_image: str) -> None:
    config = json.loads(docker("image", "inspect", cpu_image).stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert "/ready" in " ".join(config["Healthcheck"]["Test"])
    assert config["Entrypoint"] == ["tini", "--"]
    assert not any("PIP_CERT" in env or "PASSWORD" in env for env in config["Env"])


def test_ready_then_generate_with_the_shipped_adapter(container: Container) -> None:
    started = time.monotonic()
    deadline = started + READY_TIMEOUT_S
    status = 0
    while time.monotonic() < deadline:
        assert container.state()["Running"], container.logs()
        status, _ = container.request("/ready")
        if status == 200:
            break
        time.sleep(3)
    assert status == 200, container.logs()
    print(f"ready {time.monotonic() - started:.0f} s after start")
    status, body = container.request("/generate", {"prompt": "What is the capital of France?"})
    assert status == 200, body
    assert isinstance(body, dict)
    assert body["method"] == "calibrated_head"  # the default of a version with a head (v9)
    assert body["adapter"]["name"] == "smollm2-135m-uncertainty"
    assert 0.0 <= body["confidence"] <= 1.0
    stats = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", container.name).stdout.strip()
    print(f"memory in use: {stats}")


def test_sigterm_drains_the_request_in_flight_and_exits_0(container: Container) -> None:
    assert container.state()["Running"], container.logs()
    body = {"prompt": "Write a long story about a lighthouse keeper.", "max_tokens": 256}
    client = subprocess.Popen(
        [docker_cli(), "exec", container.name, "python3", "-c", CLIENT, "/generate", json.dumps(body)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2)  # the request is in the engine now
    assert client.poll() is None, "the request finished before SIGTERM: make it longer"
    docker("kill", "--signal", "TERM", container.name)
    out, err = client.communicate(timeout=600)
    status, _, text = out.partition("\n")
    assert status == "200", (out, err, container.logs())
    assert json.loads(text)["usage"]["completion_tokens"] > 0
    exit_code = docker("wait", container.name, timeout=120).stdout.strip()
    assert exit_code == "0", container.logs()
    assert "drained after signal" in container.logs()
