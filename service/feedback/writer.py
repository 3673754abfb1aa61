"""`RecordWriter`: served responses reach the outcome store without the response waiting.

A route hands its served record to `submit()`, which only appends to a bounded in-memory
queue and returns. One background thread drains the queue in batches (one transaction
each), so a locked SQLite file or a paused PostgreSQL slows recording, never answering.
When the queue is full the record is dropped and counted: the answer matters more than
its later feedback (which then gets a 404, as for any unrecorded response).

Feedback must see the records of responses served before it, so it first waits (bounded)
until everything submitted so far has been handled: `wait_handled()`.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence

from service.errors import FeedbackStoreError
from service.feedback.store import ServedResponse

log = logging.getLogger(__name__)


class RecordWriter:
    def __init__(
        self,
        write: Callable[[Sequence[ServedResponse]], None],
        *,
        capacity: int,
        batch_size: int = 256,
        on_drop: Callable[[int], None] = lambda n: None,
        on_error: Callable[[int], None] = lambda n: None,
    ) -> None:
        """`write` stores a batch (raising FeedbackStoreError on failure); `on_drop` and
        `on_error` are told how many responses were dropped (queue full) or lost (write failed)."""
        self._write = write
        self.capacity = capacity
        self.batch_size = batch_size
        self._on_drop = on_drop
        self._on_error = on_error
        self._queue: deque[ServedResponse] = deque()
        self._cond = threading.Condition()
        self._submitted = 0
        self._handled = 0
        self._closing = False
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Submitted responses not yet written (queued or being written)."""
        with self._cond:
            return self._submitted - self._handled

    def submit(self, response: ServedResponse) -> bool:
        """Queue one response for writing; False (and counted) if the queue is full.
        Never blocks on I/O: the lock is only ever held to move items in and out."""
        with self._cond:
            if len(self._queue) >= self.capacity or self._closing:
                dropped = True
            else:
                dropped = False
                self._queue.append(response)
                self._submitted += 1
                self._start_locked()
                self._cond.notify_all()
        if dropped:
            self._on_drop(1)
        return not dropped

    def _start_locked(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="outcome-writer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                batch = [self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))]
            try:
                self._write(batch)
            except FeedbackStoreError as exc:
                self._on_error(len(batch))
                log.warning("%d served responses not recorded (their feedback will 404): %s", len(batch), exc)
            except Exception:  # a bug must not stop recording for the life of the process
                self._on_error(len(batch))
                log.exception("recording %d served responses failed", len(batch))
            with self._cond:
                self._handled += len(batch)
                self._cond.notify_all()

    def wait_handled(self, timeout_s: float) -> bool:
        """Block until every response submitted before this call was written (or failed);
        False if that takes longer than `timeout_s`."""
        with self._cond:
            target = self._submitted
            return self._cond.wait_for(lambda: self._handled >= target, timeout=timeout_s)

    def close(self, timeout_s: float) -> None:
        """Write what is queued (for at most `timeout_s`), then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("outcome writer: %d served responses not recorded at shutdown", self.pending)
