"""The outcome store: every served confidence, joined later with the user's feedback.

One table, one row per confidence served (a /generate response is one item, a /score
response one item per scored pair). Feedback fills in `correct` on an existing row, so an
acknowledged label is always attached to the adapter, version and confidence it judges.
SQLite (WAL; feedback commits fsynced) by default; PostgreSQL when a URL is configured, so that
several replicas share one store. Both speak the same SQL through DB-API; only how to
connect, the parameter marker and how to start a write transaction differ.

Methods block (disk or network I/O): the async service calls them on its own store threads,
and records served responses through `RecordWriter` (service/feedback/writer.py), so no
answer ever waits on the database. PostgreSQL connections come from a pool whose sessions
carry a statement timeout and whose connects time out. Every database failure becomes
`FeedbackStoreError` after a rollback, so a caller never acknowledges what was not committed.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from service.errors import (
    FeedbackConflictError,
    FeedbackForbiddenError,
    FeedbackStoreError,
    InvalidRequestError,
    ResponseNotFoundError,
)

log = logging.getLogger(__name__)

TABLE = "confidence_outcomes"
SHADOW_TABLE = "confidence_shadow_outcomes"
SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        response_id TEXT NOT NULL,
        item_index INTEGER NOT NULL,
        endpoint TEXT NOT NULL,
        method TEXT NOT NULL,
        adapter TEXT,
        adapter_version TEXT,
        confidence DOUBLE PRECISION NOT NULL,
        served_at DOUBLE PRECISION NOT NULL,
        chat TEXT,
        answer TEXT,
        correct BOOLEAN,
        feedback_at DOUBLE PRECISION,
        client TEXT,
        labelled_by TEXT,
        label_trusted BOOLEAN,
        PRIMARY KEY (response_id, item_index)
    )""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_feedback_at ON {TABLE} (feedback_at)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_served_at ON {TABLE} (served_at)",
    # Confidences a shadow candidate read for served responses (never returned): labels are
    # not copied here but joined from the served row, so feedback needs no change.
    f"""CREATE TABLE IF NOT EXISTS {SHADOW_TABLE} (
        response_id TEXT NOT NULL,
        item_index INTEGER NOT NULL,
        adapter TEXT NOT NULL,
        adapter_version TEXT NOT NULL,
        method TEXT NOT NULL,
        confidence DOUBLE PRECISION NOT NULL,
        served_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (response_id, item_index, adapter, adapter_version)
    )""",
    f"CREATE INDEX IF NOT EXISTS {SHADOW_TABLE}_served_at ON {SHADOW_TABLE} (served_at)",
)
# Columns added after the first release: a store created before them gets them on start-up.
ADDED_COLUMNS = {"client": "TEXT", "labelled_by": "TEXT", "label_trusted": "BOOLEAN"}
# What a served response writes; feedback later fills in the rest.
SERVED_COLUMNS = (
    "response_id, item_index, endpoint, method, adapter, adapter_version, confidence, served_at, "
    "chat, answer, client"
)
COLUMNS = f"{SERVED_COLUMNS}, correct, feedback_at, labelled_by, label_trusted"
# One conditional statement: the first label wins. Two replicas labelling the same row at
# once both run it; the database lets one update the row and the other (re-checking the
# condition after the first commits) update nothing, which then reads as a duplicate or a 409.
LABEL_UPDATE = (
    f"UPDATE {TABLE} SET correct = ?, feedback_at = ?, labelled_by = ?, label_trusted = ? "
    "WHERE response_id = ? AND item_index = ? AND correct IS NULL"
)
LABEL_READ = f"SELECT correct FROM {TABLE} WHERE response_id = ? AND item_index = ?"


@dataclass(frozen=True)
class ServedItem:
    index: int
    confidence: float
    chat: list[dict[str, str]] | None = None  # the question as the model saw it; None = not stored
    answer: str | None = None


@dataclass(frozen=True)
class ServedResponse:
    id: str
    endpoint: str  # "generate" | "score"
    method: str
    adapter: str | None  # None for zero-shot
    adapter_version: str | None
    served_at: float  # unix seconds
    items: tuple[ServedItem, ...]
    client: str | None = None  # who asked (from the gateway); None = not behind a trusted gateway


@dataclass(frozen=True)
class Label:
    """One piece of feedback. `index=None` means "the only item" (a /generate response).
    `param` is where it stood in the request ("" or "items[3]."), for error messages."""

    id: str
    index: int | None
    correct: bool
    param: str = ""


@dataclass(frozen=True)
class Labeller:
    """Who sends feedback: `client` as the gateway named it (None = unknown); a `trusted`
    labeller (configured) may label any response, others only those served to them."""

    client: str | None = None
    trusted: bool = False


@dataclass(frozen=True)
class Outcome:
    """A stored row: one served confidence and, once labelled, whether it was right."""

    response_id: str
    index: int
    endpoint: str
    method: str
    adapter: str | None
    adapter_version: str | None
    confidence: float
    served_at: float
    chat: list[dict[str, str]] | None
    answer: str | None
    correct: bool | None
    feedback_at: float | None
    client: str | None = None
    labelled_by: str | None = None
    label_trusted: bool = False

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Outcome:
        """A row selected as COLUMNS (SQLite returns booleans as 0/1, hence the bool())."""
        rid, index, endpoint, method, adapter, version, confidence, served_at, chat, answer = row[:10]
        client, correct, at, labelled_by, trusted = row[10:]
        return cls(
            response_id=rid,
            index=int(index),
            endpoint=endpoint,
            method=method,
            adapter=adapter,
            adapter_version=version,
            confidence=float(confidence),
            served_at=float(served_at),
            chat=json.loads(chat) if chat is not None else None,
            answer=answer,
            correct=None if correct is None else bool(correct),
            feedback_at=None if at is None else float(at),
            client=client,
            labelled_by=labelled_by,
            label_trusted=bool(trusted),
        )


@dataclass(frozen=True)
class ShadowRecord:
    """A shadow candidate's confidences for the items of one served response."""

    response_id: str
    adapter: str
    adapter_version: str
    method: str
    served_at: float
    confidences: tuple[tuple[int, float], ...]  # (item index, confidence)


@dataclass(frozen=True)
class ShadowPair:
    """One labelled served item with the confidence a shadow candidate gave it."""

    candidate_adapter: str
    candidate_version: str
    served: Outcome
    shadow_confidence: float
    shadow_method: str  # how the candidate read it (the served method, or `adapter` without a head)


@dataclass(frozen=True)
class FeedbackResult:
    recorded: list[Outcome]  # newly labelled rows (what metrics count)
    duplicates: int  # labels that repeated what was already stored


class Connections(Protocol):
    """Where a transaction gets its connection: `borrow()` yields one for the duration of a
    transaction and drops it if a database error escapes."""

    def borrow(self) -> AbstractContextManager[Any]: ...

    def close(self) -> None: ...


class SingleConnection:
    """One connection behind a lock (SQLite: one writer at a time anyway). Opened on first
    use and reopened after a database error."""

    def __init__(self, connect: Callable[[], Any], errors: tuple[type[Exception], ...]) -> None:
        self._connect = connect
        self._errors = errors
        self._conn: Any = None
        self._lock = threading.Lock()

    @contextmanager
    def borrow(self) -> Iterator[Any]:
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
            try:
                yield self._conn
            except self._errors:
                self._discard()
                raise

    def _discard(self) -> None:
        if self._conn is not None:
            with suppress(*self._errors):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        with self._lock:
            self._discard()


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL databases the store runs on."""

    name: str
    connections: Connections
    marker: str  # DB-API parameter marker
    errors: tuple[type[Exception], ...]
    # Statements that open a write transaction. durable=True: the commit is on disk before it
    # returns (feedback, which is acknowledged); False: it may be lost to a power failure,
    # not to a crash of the process (served records, which are many and merely replaceable).
    begin: Callable[[bool], tuple[str, ...]]


def sqlite_dialect(path: Path, *, busy_timeout_s: float = 5.0) -> Dialect:
    def connect() -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are begun explicitly, below.
        conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def begin(durable: bool) -> tuple[str, ...]:
        # In WAL mode FULL fsyncs the log at every commit (an acknowledged label survives a
        # kill -9 and a power loss); NORMAL leaves it to the OS (survives a kill -9). The level
        # cannot change inside a transaction, hence before BEGIN. IMMEDIATE takes the write
        # lock before reading, so check-then-update cannot interleave with another writer.
        return (f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}", "BEGIN IMMEDIATE")

    errors = (sqlite3.Error,)
    return Dialect("sqlite", SingleConnection(connect, errors), "?", errors, begin)


def postgres_connect_kwargs(timeout_s: float) -> dict[str, Any]:
    """libpq options that bound every wait on the server: the connect, each statement and
    lock wait (server side), and unacknowledged data on a dead link (TCP, client side)."""
    ms = max(1, int(timeout_s * 1000))
    return {
        "connect_timeout": max(1, math.ceil(timeout_s)),  # libpq takes whole seconds (min 2 in practice)
        "options": f"-c statement_timeout={ms} -c lock_timeout={ms}",
        "keepalives": 1,
        "keepalives_idle": max(1, int(timeout_s)),
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": ms,
    }


class PooledConnections:
    """psycopg's connection pool: replicas' threads each borrow a connection, a broken one is
    replaced, and waiting for a free (or new) connection is bounded by `timeout_s`."""

    def __init__(self, url: str, *, timeout_s: float, max_size: int) -> None:
        from psycopg_pool import ConnectionPool

        self.timeout_s = timeout_s
        self._pool = ConnectionPool(
            url,
            kwargs=postgres_connect_kwargs(timeout_s),
            min_size=1,
            max_size=max_size,
            timeout=timeout_s,
            # The service starts without its database; the pool keeps trying in the background.
            open=False,
            reconnect_timeout=3600 * 24 * 365,
            name="confidence-outcomes",
        )
        self._opened = False
        self._lock = threading.Lock()

    @contextmanager
    def borrow(self) -> Iterator[Any]:
        with self._lock:
            if not self._opened:
                self._pool.open(wait=False)
                self._opened = True
        with self._pool.connection(timeout=self.timeout_s) as conn:
            yield conn

    def close(self) -> None:
        with self._lock:
            if self._opened:
                self._pool.close(timeout=self.timeout_s)
                self._opened = False


def postgres_dialect(url: str, *, timeout_s: float = 5.0, pool_size: int = 4) -> Dialect:
    import psycopg

    def begin(durable: bool) -> tuple[str, ...]:
        # psycopg opens the transaction itself; SET LOCAL applies to it alone.
        return () if durable else ("SET LOCAL synchronous_commit = off",)

    connections = PooledConnections(url, timeout_s=timeout_s, max_size=pool_size)
    return Dialect("postgresql", connections, "%s", (psycopg.Error,), begin)


class OutcomeStore:
    """Served responses and their feedback in one SQL table (thread-safe).

    Connections are opened on first use and replaced after any database error, so the
    service starts without its database and recovers when the database comes back.
    """

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._schema_ready = False

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self.dialect.marker)

    @contextmanager
    def _transaction(self, *, write: bool = True, durable: bool = True) -> Iterator[Any]:
        """A cursor inside one transaction; any database error rolls back and becomes
        FeedbackStoreError (domain errors raised inside also roll back, unchanged)."""
        try:
            with self.dialect.connections.borrow() as conn:
                if not self._schema_ready:
                    self._create_schema(conn)
                    self._schema_ready = True
                cursor = conn.cursor()
                for statement in self.dialect.begin(durable) if write else ():
                    cursor.execute(statement)
                try:
                    yield cursor
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
        except self.dialect.errors as exc:
            log.error("feedback store (%s) failed: %s: %s", self.dialect.name, type(exc).__name__, exc)
            stored = "nothing was stored, " if write else ""
            raise FeedbackStoreError(
                f"the feedback store ({self.dialect.name}) is unavailable ({type(exc).__name__}); "
                f"{stored}retry later"
            ) from exc

    def _create_schema(self, conn: Any) -> None:
        cursor = conn.cursor()
        for statement in SCHEMA:
            cursor.execute(statement)
        cursor.execute(f"SELECT * FROM {TABLE} WHERE 1 = 0")
        present = {column[0] for column in cursor.description}
        for column, kind in ADDED_COLUMNS.items():
            if column not in present:
                cursor.execute(f"ALTER TABLE {TABLE} ADD COLUMN {column} {kind}")
        conn.commit()

    def close(self) -> None:
        self.dialect.connections.close()

    def record(self, response: ServedResponse) -> None:
        """Store one served response (all its items)."""
        self.record_many([response])

    def record_many(self, responses: Sequence[ServedResponse]) -> None:
        """Store served responses (all their items) in one transaction."""
        rows = [
            (
                response.id,
                item.index,
                response.endpoint,
                response.method,
                response.adapter,
                response.adapter_version,
                item.confidence,
                response.served_at,
                json.dumps(item.chat, ensure_ascii=False) if item.chat is not None else None,
                item.answer,
                response.client,
            )
            for response in responses
            for item in response.items
        ]
        if not rows:
            return
        markers = ", ".join("?" * len(rows[0]))
        insert = self._sql(f"INSERT INTO {TABLE} ({SERVED_COLUMNS}) VALUES ({markers})")
        with self._transaction(durable=False) as cursor:
            cursor.executemany(insert, rows)

    def add_feedback(
        self, labels: Sequence[Label], *, now: float, by: Labeller | None = None
    ) -> FeedbackResult:
        """Label stored items, all or none. Only the client a response was served to, or a
        trusted labeller, may label it. The first label of an item wins, also across
        replicas: each is one conditional UPDATE.

        Repeating a stored label is a no-op (counted in `duplicates`).

        Raises:
            ResponseNotFoundError: an id (or its index) was never recorded, or has expired.
            FeedbackForbiddenError: the response was served to another client.
            InvalidRequestError: no index given for a response with several items.
            FeedbackConflictError: the item is already labelled the other way.
            FeedbackStoreError: the database failed; nothing was stored.
        """
        by = by or Labeller()
        recorded: list[Outcome] = []
        duplicates = 0
        with self._transaction() as cursor:
            for label in labels:
                row = self._target(cursor, label)
                if not by.trusted and row.client != by.client:
                    raise FeedbackForbiddenError(
                        f"response {label.id!r} was served to another client; only it or a configured "
                        "labeller may label it",
                        param=f"{label.param}id",
                    )
                update = (label.correct, now, by.client, by.trusted, row.response_id, row.index)
                cursor.execute(self._sql(LABEL_UPDATE), update)
                if cursor.rowcount == 1:
                    recorded.append(_labelled(row, label.correct, now, by))
                    continue
                # Labelled already (by this batch, or by another replica that just committed).
                cursor.execute(self._sql(LABEL_READ), (row.response_id, row.index))
                (stored,) = cursor.fetchone()
                if bool(stored) == label.correct:
                    duplicates += 1
                else:
                    raise FeedbackConflictError(
                        f"response {label.id!r} item {row.index} is already labelled correct={bool(stored)}",
                        param=f"{label.param}correct",
                    )
        return FeedbackResult(recorded=recorded, duplicates=duplicates)

    def _target(self, cursor: Any, label: Label) -> Outcome:
        select = f"SELECT {COLUMNS} FROM {TABLE} WHERE response_id = ? ORDER BY item_index"
        cursor.execute(self._sql(select), (label.id,))
        rows = [Outcome.from_row(r) for r in cursor.fetchall()]
        if not rows:
            raise ResponseNotFoundError(
                f"no served response with id {label.id!r} (unknown, or older than the retention period)",
                param=f"{label.param}id",
            )
        if label.index is None:
            if len(rows) > 1:
                raise InvalidRequestError(
                    f"response {label.id!r} scored {len(rows)} items: give the 'index' of the one judged",
                    param=f"{label.param}index",
                )
            return rows[0]
        for row in rows:
            if row.index == label.index:
                return row
        raise ResponseNotFoundError(
            f"response {label.id!r} has no item {label.index} (it has {len(rows)})",
            param=f"{label.param}index",
        )

    def outcomes(
        self,
        *,
        labelled_since: float | None = None,
        adapter: str | None = None,
        method: str | None = None,
        version: str | None = None,
        trusted_only: bool = False,
    ) -> list[Outcome]:
        """Labelled rows, oldest feedback first, optionally filtered. `adapter=None` with
        a method filter selects rows of any adapter."""
        where, params = _label_filter(labelled_since, adapter, method, version, trusted_only)
        query = (
            f"SELECT {COLUMNS} FROM {TABLE} WHERE {' AND '.join(where)} "
            "ORDER BY feedback_at, response_id, item_index"
        )
        with self._transaction(write=False) as cursor:
            cursor.execute(self._sql(query), params)
            return [Outcome.from_row(r) for r in cursor.fetchall()]

    def label_counts(
        self,
        *,
        labelled_since: float | None = None,
        adapter: str | None = None,
        method: str | None = None,
        version: str | None = None,
        trusted_only: bool = False,
    ) -> list[tuple[float, bool, int]]:
        """(confidence, correct, how many) of labelled rows, filtered as `outcomes`: the only
        two columns a calibration report needs, grouped by the database (no text is read)."""
        where, params = _label_filter(labelled_since, adapter, method, version, trusted_only)
        query = (
            f"SELECT confidence, correct, COUNT(*) FROM {TABLE} WHERE {' AND '.join(where)} "
            "GROUP BY confidence, correct ORDER BY confidence"
        )
        with self._transaction(write=False) as cursor:
            cursor.execute(self._sql(query), params)
            return [(float(c), bool(y), int(n)) for c, y, n in cursor.fetchall()]

    def purge(self, *, served_before: float) -> int:
        """Delete rows served before the cutoff (the retention period); returns how many."""
        with self._transaction(durable=False) as cursor:
            cursor.execute(self._sql(f"DELETE FROM {SHADOW_TABLE} WHERE served_at < ?"), (served_before,))
            cursor.execute(self._sql(f"DELETE FROM {TABLE} WHERE served_at < ?"), (served_before,))
            return int(cursor.rowcount)

    def unlabelled(
        self, *, served_since: float, adapter: str | None, method: str, version: str | None, limit: int
    ) -> list[Outcome]:
        """Served items without a label yet, newest first (candidates for labelling)."""
        where = ["correct IS NULL", "served_at >= ?", "method = ?"]
        params: list[Any] = [served_since, method]
        for column, value in (("adapter", adapter), ("adapter_version", version)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        query = (
            f"SELECT {COLUMNS} FROM {TABLE} WHERE {' AND '.join(where)} "
            f"ORDER BY served_at DESC, response_id, item_index LIMIT {int(limit)}"
        )
        with self._transaction(write=False) as cursor:
            cursor.execute(self._sql(query), params)
            return [Outcome.from_row(r) for r in cursor.fetchall()]

    def record_shadow(self, record: ShadowRecord) -> None:
        """Store a shadow candidate's confidences for a served response."""
        rows = [
            (record.response_id, index, record.adapter, record.adapter_version, record.method, confidence,
             record.served_at)
            for index, confidence in record.confidences
        ]  # fmt: skip
        insert = self._sql(
            f"INSERT INTO {SHADOW_TABLE} (response_id, item_index, adapter, adapter_version, method, "
            "confidence, served_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        with self._transaction(durable=False) as cursor:
            cursor.executemany(insert, rows)

    def shadow_pairs(
        self, *, labelled_since: float | None, adapter: str, method: str, version: str | None = None
    ) -> list[ShadowPair]:
        """Labelled items served by `adapter` (optionally one version) that a shadow also scored."""
        where = ["o.correct IS NOT NULL", "o.adapter = ?", "o.method = ?"]
        params: list[Any] = [adapter, method]
        if labelled_since is not None:
            where.append("o.feedback_at >= ?")
            params.append(labelled_since)
        if version is not None:
            where.append("o.adapter_version = ?")
            params.append(version)
        columns = ", ".join(f"o.{c.strip()}" for c in COLUMNS.split(","))
        query = (
            f"SELECT s.adapter, s.adapter_version, s.confidence, s.method, {columns} FROM {SHADOW_TABLE} s "
            f"JOIN {TABLE} o ON o.response_id = s.response_id AND o.item_index = s.item_index "
            f"WHERE {' AND '.join(where)} ORDER BY o.feedback_at, o.response_id, o.item_index"
        )
        with self._transaction(write=False) as cursor:
            cursor.execute(self._sql(query), params)
            return [
                ShadowPair(row[0], row[1], Outcome.from_row(row[4:]), float(row[2]), row[3])
                for row in cursor.fetchall()
            ]


def _label_filter(
    labelled_since: float | None,
    adapter: str | None,
    method: str | None,
    version: str | None,
    trusted_only: bool = False,
) -> tuple[list[str], list[Any]]:
    """WHERE clauses (joined by AND) and parameters selecting labelled rows."""
    where = ["correct IS NOT NULL"]
    if trusted_only:
        where.append("label_trusted")
    params: list[Any] = []
    for column, value in (
        ("feedback_at >=", labelled_since),
        ("adapter =", adapter),
        ("method =", method),
        ("adapter_version =", version),
    ):
        if value is not None:
            where.append(f"{column} ?")
            params.append(value)
    return where, params


def _labelled(row: Outcome, correct: bool, now: float, by: Labeller) -> Outcome:
    fields = {
        **row.__dict__,
        "correct": correct,
        "feedback_at": now,
        "labelled_by": by.client,
        "label_trusted": by.trusted,
    }
    return Outcome(**fields)


def open_store(*, db_url: str | None, db_path: Path, timeout_s: float = 5.0) -> OutcomeStore:
    """PostgreSQL when a URL is given, else SQLite at `db_path`. Connects lazily. `timeout_s`
    bounds each wait on the database (lock, statement, connect)."""
    if db_url:
        return OutcomeStore(postgres_dialect(db_url, timeout_s=timeout_s))
    return OutcomeStore(sqlite_dialect(db_path, busy_timeout_s=timeout_s))
