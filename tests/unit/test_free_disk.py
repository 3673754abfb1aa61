"""scripts/free-disk (run by scripts/test before the set-up) prunes only what the container
tests leave behind, and only when the disk is short. Run for real with a recording `docker`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAKE_DOCKER = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/calls"
[ "$1" = info ] && exit 0
echo "Total reclaimed space: 0B"
"""


def run_free_disk(tmp_path: Path, min_gb: int) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    docker = tmp_path / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    env = {**os.environ, "DOCKER": str(docker), "FREE_DISK_MIN_GB": str(min_gb)}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/free-disk")], env=env, capture_output=True, text=True, timeout=60
    )
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return result, calls


def test_a_short_disk_prunes_dangling_images_and_bounds_the_build_cache(tmp_path):
    result, calls = run_free_disk(tmp_path, min_gb=10**6)  # "short" whatever this disk has
    assert result.returncode == 0, result.stderr
    assert calls == ["info", "image prune --force", "builder prune --force --keep-storage=8GB"]
    assert "pruning dangling images" in result.stdout


def test_enough_disk_touches_nothing(tmp_path):
    result, calls = run_free_disk(tmp_path, min_gb=0)
    assert result.returncode == 0, result.stderr
    assert calls == []
    assert "GB free here" in result.stdout


def test_the_test_command_frees_disk_before_it_installs():
    lines = (ROOT / "scripts/test").read_text().splitlines()
    assert lines.index("scripts/free-disk") < lines.index("scripts/setup test")
