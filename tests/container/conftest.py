"""A Docker engine and a base image without any container registry.

Debian's dockerd is started here (niced, no bridge network) when none runs, and stopped
again at the end. The base image is Debian bookworm made with debootstrap from the Debian
mirror and `docker import`ed; it is tagged by its recipe, so later runs reuse it, as they
reuse Docker's layer cache for the image build itself.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import json
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

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 3600
# Build cache kept across runs: enough for the images' pip layers to be reused by the next run,
# bounded so that a machine running the suite again and again (CI) does not fill its disk.
BUILD_CACHE_KEEP = "8GB"
DEBIAN_MIRROR = os.environ.get("CONFIDENCE_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# What the Dockerfile needs of a base image: python3.11 with venv, CA certificates, useradd.
# python3-distutils is named because debootstrap does not resolve the virtual
# python3.11-distutils that python3.11-venv depends on.
BASE_PACKAGES = ("python3.11", "python3.11-venv", "python3-distutils", "ca-certificates", "passwd")
BASE_RECIPE = f"debootstrap --variant=minbase --include={','.join(BASE_PACKAGES)} bookworm {DEBIAN_MIRROR}"
BASE_TAG = f"confidence-test-base:bookworm-{hashlib.sha256(BASE_RECIPE.encode()).hexdigest()[:12]}"
# Runs inside the container (python3 of the image): one HTTP request, prints status + body
# (status 0 while the server does not listen yet).
CLIENT = """
import json, sys, urllib.error, urllib.request
data = sys.argv[2].encode() if len(sys.argv) > 2 else None
req = urllib.request.Request("http://127.0.0.1:8000" + sys.argv[1], data=data,
                             headers={"content-type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=600) as response:
        print(response.status); print(response.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code); print(exc.read().decode())
except OSError as exc:
    print(0); print(json.dumps({"error": str(exc)}))
"""


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


def prune_leftovers() -> None:
    """Drop what earlier runs left: the tests tag their images with fixed names, so each rebuild
    after a Dockerfile or lock change leaves the previous image untagged, gigabytes each, and
    the build cache only grows. Images in use and the tagged base image are kept."""
    docker("image", "prune", "--force", timeout=600, check=False)
    docker("builder", "prune", "--force", f"--keep-storage={BUILD_CACHE_KEEP}", timeout=600, check=False)


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with _engine(tmp_path_factory):
        prune_leftovers()
        try:
            yield
        finally:
            prune_leftovers()


@contextlib.contextmanager
def _engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The running Docker engine, or Debian's dockerd started for this session."""
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


def local_torch_wheel() -> Path | None:
    """torch 2.13.0+cpu from pip's find-links on this machine, if it has one there."""
    dirs = os.environ.get("PIP_FIND_LINKS", "").split()
    for conf in ("/etc/pip.conf", "/etc/xdg/pip/pip.conf", str(Path.home() / ".config/pip/pip.conf")):
        parser = configparser.ConfigParser()
        parser.read(conf)
        dirs += parser.get("global", "find-links", fallback="").split()
    for directory in dirs:
        wheels = sorted(Path(directory.removeprefix("file://")).glob("torch-2.13.0+cpu-cp311-*.whl"))
        if wheels:
            return wheels[0]
    return None


def pip_ca_bundle() -> str | None:
    """The CA bundle pip uses here (a TLS-inspecting proxy's CA may be in it)."""
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE")):
        if candidate and Path(candidate).is_file():
            return candidate
    default = Path("/etc/ssl/certs/ca-certificates.crt")
    return str(default) if default.is_file() else None


def build_image(
    context: Path,
    *,
    target: str,
    tag: str,
    build_args: dict[str, str],
    log: Path,
    dockerfile: Path | None = None,
) -> None:
    """`docker build` (BuildKit) of one target, tagged `tag`; its output goes to `log`.

    The build reaches PyPI and the Debian mirror the way this machine does (host network,
    pip's CA bundle as the `pip_ca` secret); a torch wheel in pip's find-links is used
    instead of the PyTorch index."""
    args = [f"--build-arg={k}={v}" for k, v in build_args.items()]
    wheel = local_torch_wheel()
    if wheel is not None:
        target_wheel = REPO / "deploy/docker/wheels" / wheel.name
        if not target_wheel.exists():
            try:
                os.link(wheel, target_wheel)
            except OSError:
                target_wheel.write_bytes(wheel.read_bytes())
        args.append("--build-arg=TORCH_INDEX_URL=")
    ca = pip_ca_bundle()
    if ca is not None:
        args += ["--secret", f"id=pip_ca,src={ca}"]
    if dockerfile is not None:
        args += ["--file", str(dockerfile)]
    cmd = ["nice", "-n", "19", docker_cli(), "build", "--network", "host", "--progress", "plain"]
    cmd += ["--target", target, *args, "-t", tag, str(context)]
    started = time.monotonic()
    with log.open("w") as out:
        built = subprocess.run(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    print(f"{tag} built in {time.monotonic() - started:.0f} s")
    if built.returncode != 0:
        pytest.fail(f"docker build of {tag} failed:\n{log.read_text()[-6000:]}")


class Container:
    def __init__(self, name: str) -> None:
        self.name = name

    def request(self, path: str, body: dict[str, object] | None = None) -> tuple[int, object]:
        args = ["exec", self.name, "python3", "-c", CLIENT, path]
        result = docker(*args, *([json.dumps(body)] if body is not None else []), timeout=660, check=False)
        if result.returncode != 0:
            pytest.fail(f"docker exec failed ({result.returncode}): {result.stderr[-1000:]}\n{self.logs()}")
        status, _, text = result.stdout.partition("\n")
        return int(status), json.loads(text)

    def state(self) -> dict[str, object]:
        inspected = json.loads(docker("inspect", self.name).stdout)[0]
        state: dict[str, object] = inspected["State"]
        return state

    def logs(self) -> str:
        """The end of the container's log, with vLLM's error lines (the cause of a failed start)."""
        result = docker("logs", self.name, check=False)
        text = result.stdout + result.stderr
        errors = [line for line in text.splitlines() if "Error" in line and "File " not in line]
        return "\n".join(errors[-20:]) + "\n...\n" + text[-3000:]
