"""Fixtures for every test layer."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _feedback_db_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every Settings() built by a test stores feedback under the test's tmp_path, never in
    the user's data directory."""
    path = tmp_path / "feedback.sqlite3"
    monkeypatch.setenv("CONFIDENCE_FEEDBACK_DB_PATH", str(path))
    return path
