"""A Docker engine and a base image without any container registry.

Debian's dockerd is started here (niced, no bridge network) when none runs, and stopped
again at the end. The base image is Debian bookworm made with debootstrap from the Debian
mirror and `docker import`ed; it is tagged by its recipe, so later runs reuse it, as they
reuse Docker's layer cache for the image build itself.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import stop

pytestmark = pytest.mark.container

DEBIAN_MIRROR = os.environ.get("CONFIDENCE_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the Dockerfile needs of a base image: python3.11 with venv, CA certificates, useradd.
# python3-distutils is named because debootstrap does not resolve the virtual
# python3.11-distutils that python3.11-venv depends on.
# python3-distutils is named because debootstrap does not resolve the virtual
# python3.11-distutils that python3.11-venv depends on.
BASE_PACKAGES = ("python3.11", "python3.11-venv", "python3-distutils", "ca-certificates", "passwd")
BASE_RECIPE = f"debootstrap --variant=minbase --include={','.join(BASE_PACKAGES)} bookworm {DEBIAN_MIRROR}"
BASE_TAG = f"confidence-test-base:bookworm-{hashlib.sha256(BASE_RECIPE.encode()).hexdigest()[:12]}"


def docker_cli() -> str:
    """Debian's client first: it speaks BuildKit to Debian's dockerd without a buildx plugin."""
    for path in ("/usr/bin/docker", shutil.which("docker")):
        if path and os.access(path, os.X_OK):
            return path
    pytest.fail("docker is not installed: run scripts/setup (Debian's docker.io)")


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [docker_cli(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(args[:3])} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def engine_answers() -> bool:
    try:
        return docker("info", timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    if engine_answers():
        yield
        return
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not os.access(dockerd, os.X_OK):
        pytest.fail("dockerd is not installed: run scripts/setup (Debian's docker.io)")
    log = tmp_path_factory.mktemp("dockerd") / "dockerd.log"
    # Containers here use the host's loopback or no network at all: no bridge, no NAT rules.
    cmd = ["nice", "-n", "19", dockerd, "--bridge=none", "--iptables=false", "--ip-masq=false"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not engine_answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"dockerd did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def base_image(docker_engine: None) -> str:
    """A local Debian bookworm image with python3.11 (made once, then reused)."""
    if docker("image", "inspect", BASE_TAG, check=False).returncode == 0:
        return BASE_TAG
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.access(debootstrap, os.X_OK):
        pytest.fail("debootstrap is not installed: run scripts/setup")
    with tempfile.TemporaryDirectory(prefix="confidence-base-") as tmp:
        root = Path(tmp) / "root"
        options = ["--variant=minbase", f"--include={','.join(BASE_PACKAGES)}"]
        made = subprocess.run(
            ["nice", "-n", "19", debootstrap, *options, "bookworm", str(root), DEBIAN_MIRROR],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if made.returncode != 0:
            pytest.fail(f"debootstrap failed:\n{made.stdout[-3000:]}\n{made.stderr[-3000:]}")
        (root / "var/cache/apt/archives").mkdir(parents=True, exist_ok=True)
        for leftover in (root / "var/cache/apt/archives").glob("*.deb"):
            leftover.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [docker_cli(), "import", "--change", 'CMD ["/bin/bash"]', "-", BASE_TAG],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        tar.wait()
        if imported.returncode != 0:
            pytest.fail(f"docker import failed:\n{imported.stderr}")
    return BASE_TAG
