"""The outcome store on both databases it supports (SQLite file, a real PostgreSQL server),
and the durability of an acknowledged label across a kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.errors import (
    FeedbackConflictError,
    FeedbackStoreError,
    InvalidRequestError,
    ResponseNotFoundError,
)
from service.feedback.store import Label, OutcomeStore, ServedItem, ServedResponse, open_store
from tests.postgres import postgres_server

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> Iterator[OutcomeStore]:
    if request.param == "sqlite":
        opened = open_store(db_url=None, db_path=tmp_path / "outcomes.sqlite3")
    else:
        url = request.getfixturevalue("postgres_url")
        opened = open_store(db_url=url, db_path=tmp_path / "unused")
        with opened._transaction() as cursor:  # each test starts from an empty table
            cursor.execute("DELETE FROM confidence_outcomes")
    yield opened
    opened.close()


def served(rid: str, confidences: list[float], *, at: float = 1000.0, text: bool = False) -> ServedResponse:
    items = tuple(
        ServedItem(
            index=i,
            confidence=c,
            chat=[{"role": "user", "content": f"q{i}"}] if text else None,
            answer=f"a{i}" if text else None,
        )
        for i, c in enumerate(confidences)
    )
    return ServedResponse(rid, "score", "adapter", "unc", "v2", at, items)


def test_feedback_joins_the_served_row(store):
    store.record(served("r1", [0.25, 0.75], text=True))
    result = store.add_feedback([Label("r1", 1, True)], now=2000.0)
    (row,) = result.recorded
    assert (row.response_id, row.index, row.confidence, row.correct, row.feedback_at) == (
        "r1",
        1,
        0.75,
        True,
        2000.0,
    )
    assert (row.adapter, row.adapter_version, row.method, row.chat, row.answer) == (
        "unc",
        "v2",
        "adapter",
        [{"role": "user", "content": "q1"}],
        "a1",
    )
    (stored,) = store.outcomes()
    assert stored == row


def test_duplicates_conflicts_and_unknowns(store):
    store.record(served("r1", [0.5]))
    store.record(served("r2", [0.5, 0.6]))
    assert len(store.add_feedback([Label("r1", None, False)], now=1.0).recorded) == 1
    assert store.add_feedback([Label("r1", 0, False)], now=2.0).duplicates == 1
    with pytest.raises(FeedbackConflictError):
        store.add_feedback([Label("r1", None, True)], now=3.0)
    with pytest.raises(ResponseNotFoundError):
        store.add_feedback([Label("nope", None, True)], now=3.0)
    with pytest.raises(ResponseNotFoundError):
        store.add_feedback([Label("r2", 5, True)], now=3.0)
    with pytest.raises(InvalidRequestError):
        store.add_feedback([Label("r2", None, True)], now=3.0)
    # A failing batch stores nothing of what came before the failure.
    with pytest.raises(ResponseNotFoundError):
        store.add_feedback([Label("r2", 0, True), Label("nope", 0, True)], now=4.0)
    assert [(r.response_id, r.feedback_at) for r in store.outcomes()] == [("r1", 1.0)]


def test_outcomes_filter_by_window_adapter_method_version(store):
    store.record(served("r1", [0.1]))
    store.record(ServedResponse("z1", "generate", "zero_shot", None, None, 1000.0, (ServedItem(0, 0.4),)))
    store.add_feedback([Label("r1", None, True)], now=100.0)
    store.add_feedback([Label("z1", None, False)], now=200.0)
    assert [r.response_id for r in store.outcomes(labelled_since=150.0)] == ["z1"]
    assert [r.response_id for r in store.outcomes(adapter="unc")] == ["r1"]
    assert [r.response_id for r in store.outcomes(method="zero_shot")] == ["z1"]
    assert store.outcomes(adapter="unc", version="v1") == []


def test_retention_purges_old_rows(store):
    store.record(served("old", [0.5], at=100.0))
    store.record(served("new", [0.5], at=900.0))
    assert store.purge(served_before=500.0) == 1
    with pytest.raises(ResponseNotFoundError):
        store.add_feedback([Label("old", None, True)], now=1000.0)
    assert len(store.add_feedback([Label("new", None, True)], now=1000.0).recorded) == 1


def test_an_unreachable_postgres_is_a_store_error_and_recovers_nothing_silently(tmp_path):
    store = open_store(db_url="postgresql://postgres@127.0.0.1:9/none", db_path=tmp_path / "unused")
    with pytest.raises(FeedbackStoreError, match="nothing was stored"):
        store.add_feedback([Label("r1", None, True)], now=1.0)
    with pytest.raises(FeedbackStoreError):
        store.record(served("r1", [0.5]))


def test_sqlite_fsyncs_feedback_commits_but_not_served_records(tmp_path):
    store = open_store(db_url=None, db_path=tmp_path / "o.sqlite3")

    def synchronous() -> int:
        with store._transaction(write=False) as cursor:
            assert cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            return int(cursor.execute("PRAGMA synchronous").fetchone()[0])

    store.record(served("r1", [0.5]))
    assert synchronous() == 1  # NORMAL
    store.add_feedback([Label("r1", None, True)], now=1.0)
    assert synchronous() == 2  # FULL


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from service.feedback.store import Label, open_store

    store = open_store(db_url=None, db_path=Path(sys.argv[1]))
    for i in range(int(sys.argv[2])):
        store.add_feedback([Label(f"r{i}", None, i % 2 == 0)], now=time.time())
        print(i, flush=True)  # the acknowledgement: sent only after the commit returned
    time.sleep(60)
    """
)


def test_acknowledged_feedback_survives_kill_9(tmp_path):
    """A writer labels rows one by one and prints an acknowledgement after each commit; it is
    SIGKILLed while still writing. Every acknowledged label must be in the file afterwards."""
    path = tmp_path / "outcomes.sqlite3"
    seed = open_store(db_url=None, db_path=path)
    for i in range(400):
        seed.record(served(f"r{i}", [0.5]))
    seed.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), "400"], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )
    assert proc.stdout is not None
    acknowledged = []
    deadline = time.monotonic() + 60
    while len(acknowledged) < 50 and time.monotonic() < deadline:
        acknowledged.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the writer is committing the next labels
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and len(acknowledged) == 50
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        labelled = dict(
            conn.execute("SELECT response_id, correct FROM confidence_outcomes WHERE correct IS NOT NULL")
        )
    for i in acknowledged:
        assert labelled[f"r{i}"] == (i % 2 == 0)


def test_shadow_confidences_join_the_labels_of_served_rows(store):
    from service.feedback.store import SHADOW_TABLE, ShadowRecord

    with store._transaction() as cursor:  # the PostgreSQL database outlives one test
        cursor.execute(f"DELETE FROM {SHADOW_TABLE}")
    store.record(served("r1", [0.2, 0.7]))
    store.record(served("r2", [0.9], at=100.0))
    store.record_shadow(ShadowRecord("r1", "unc", "v3", "adapter", 1000.0, ((0, 0.25), (1, 0.65))))
    store.record_shadow(ShadowRecord("r2", "unc", "v3", "adapter", 100.0, ((0, 0.8),)))
    store.add_feedback([Label("r1", 1, True), Label("r2", None, False)], now=500.0)
    pairs = store.shadow_pairs(labelled_since=None, adapter="unc", method="adapter")
    assert [(p.served.response_id, p.served.index, p.served.correct, p.shadow_confidence) for p in pairs] == [
        ("r1", 1, True, 0.65),
        ("r2", 0, False, 0.8),
    ]  # labelled rows only (r1 item 0 has no label), by feedback time, then id
    assert {(p.candidate_adapter, p.candidate_version) for p in pairs} == {("unc", "v3")}
    assert store.shadow_pairs(labelled_since=None, adapter="unc", method="adapter", version="v1") == []
    unlabelled = store.unlabelled(served_since=0.0, adapter="unc", method="adapter", version="v2", limit=10)
    assert [(o.response_id, o.index) for o in unlabelled] == [("r1", 0)]
    store.purge(served_before=500.0)  # r2 and its shadow row go
    assert [
        p.served.response_id for p in store.shadow_pairs(labelled_since=None, adapter="unc", method="adapter")
    ] == ["r1"]
