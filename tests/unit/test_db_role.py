"""The least-privilege database role of deploy/postgres/app-role.sql, on a real PostgreSQL:
the outcome store works under it, and it can do nothing beyond its own schema."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from service.feedback.store import Label, ServedItem, ServedResponse, open_store
from tests.postgres import _binary, postgres_server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def app_url() -> Iterator[str]:
    with postgres_server() as url:
        port = url.rsplit(":", 1)[1].split("/")[0]
        result = subprocess.run(
            [
                _binary("psql"), "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", "postgres",
                "-v", "ON_ERROR_STOP=1", "-v", "app_role=confidence_app", "-v", "app_password=pw",
                "-v", "db=postgres", "-f", str(ROOT / "deploy/postgres/app-role.sql"),
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        yield url.replace("postgres@", "confidence_app@")


def test_the_outcome_store_works_under_the_app_role(app_url, tmp_path):
    store = open_store(db_url=app_url, db_path=tmp_path / "unused")
    try:
        store.record(ServedResponse("r1", "score", "adapter", "unc", "v1", 1.0, (ServedItem(0, 0.7),)))
        result = store.add_feedback([Label("r1", 0, True)], now=2.0)
        assert len(result.recorded) == 1
    finally:
        store.close()
    with psycopg.connect(app_url) as conn:
        (schema,) = conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'confidence_outcomes'"
        ).fetchone()
    assert schema == "confidence"


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE ROLE intruder",
        "CREATE DATABASE other",
        "CREATE TABLE public.planted (x int)",
        "SELECT rolpassword FROM pg_authid",
        "ALTER ROLE confidence_app SUPERUSER",
    ],
)
def test_the_app_role_can_do_nothing_else(app_url, statement):
    with (
        psycopg.connect(app_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement)
