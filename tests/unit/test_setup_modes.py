"""scripts/serve sets up only what serving needs: no Debian package, no training or test
tools. Runs the real scripts/setup in a scratch copy of the repository with apt-get, sudo
and dpkg shadowed on PATH by scripts that fail loudly."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("apt-get", "apt", "sudo", "dpkg")


def scratch_repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup", repo / "scripts" / "setup")
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    for name in FORBIDDEN:
        tool = shadow / name
        tool.write_text(f"#!/bin/sh\necho 'FORBIDDEN {name} $*' >&2\nexit 97\n")
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{shadow}:{os.environ['PATH']}", "CONFIDENCE_ENGINE": "cpu"}
    env.pop("CONFIDENCE_MODEL", None)
    return repo, env


def setup(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "scripts/setup", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )


def test_serve_set_up_on_a_fresh_machine_installs_no_debian_package(tmp_path):
    repo, env = scratch_repo(tmp_path)
    result = setup(repo, {**env, "SETUP_DRY_RUN": "1"}, "serve")
    assert result.returncode == 0, result.stderr
    planned = [line for line in result.stdout.splitlines() if line.startswith("would run:")]
    assert any("pip install -q -e .[cpu,model]" in line for line in planned), planned
    assert any("fetch-model" in line for line in planned)
    assert not any(tool in line.split() for line in planned for tool in FORBIDDEN), planned
    assert not any("train" in line or "dev" in line or ".tools" in line for line in planned), planned


def test_serve_set_up_runs_without_apt_get_once_installed(tmp_path):
    repo, env = scratch_repo(tmp_path)
    (repo / ".venv" / "bin").mkdir(parents=True)
    python = repo / ".venv" / "bin" / "python"
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    digest = hashlib.sha256((repo / "pyproject.toml").read_bytes()).hexdigest()
    (repo / ".venv" / ".setup-stamp").write_text(f"{digest} cpu,model\n")
    result = setup(repo, {**env, "CONFIDENCE_MODEL": "/models/any"}, "serve")
    assert result.returncode == 0, result.stderr
    assert "FORBIDDEN" not in result.stderr


def test_the_test_set_up_still_installs_the_tools(tmp_path):
    repo, env = scratch_repo(tmp_path)
    result = setup(repo, {**env, "SETUP_DRY_RUN": "1"})
    assert result.returncode == 0, result.stderr
    assert "pip install -q -e .[cpu,model,train,dev]" in result.stdout
    assert "checkov" in result.stdout


def test_scripts_serve_and_test_pick_their_modes():
    assert "scripts/setup serve" in (ROOT / "scripts" / "serve").read_text()
    assert "scripts/setup test" in (ROOT / "scripts" / "test").read_text()
