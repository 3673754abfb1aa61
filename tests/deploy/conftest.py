"""Deployment files checked with the real tools: hadolint, docker-compose, kubectl
kustomize, kubernetes-validate, checkov. scripts/setup installs every one of them; a
missing tool fails the test (with the fix in the message) rather than skipping it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# checkov and kubectl live in their own virtual environment (scripts/setup): checkov pins
# old releases of packaging, networkx and cachetools that would break vLLM's environment.
TOOLS_BIN = REPO / ".tools" / "venv" / "bin"


def tool(name: str) -> str:
    """Path of a command-line tool: the tools venv, this interpreter's venv, then PATH."""
    for candidate in (TOOLS_BIN / name, Path(sys.executable).parent / name):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run scripts/setup")
    return found


def run(
    cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False, cwd=REPO
    )


def checkov(path: Path, framework: str) -> subprocess.CompletedProcess[str]:
    """checkov on one file, offline (--skip-download: no policy or guideline downloads)."""
    return run(
        [
            tool("checkov"),
            "-f",
            str(path),
            "--framework",
            framework,
            "--skip-download",
            "--compact",
            "--quiet",
        ]
    )


def kustomize(directory: str, out_dir: Path) -> Path:
    """`kubectl kustomize` of a directory under the repository, written to out_dir."""
    result = run([tool("kubectl"), "kustomize", str(REPO / directory)])
    assert result.returncode == 0, result.stderr
    out = out_dir / "rendered.yaml"
    out.write_text(result.stdout)
    return out


def served_default() -> str:
    """NAME@VERSION the service starts on with the shipped adapters (service.lora.files)."""
    from service.lora.files import newest_version_dir

    name_dir = REPO / "adapters/exported/smollm2-135m-uncertainty"
    newest = newest_version_dir(name_dir, trained_only=True)
    assert newest is not None
    return f"{name_dir.name}@{newest.name}"
