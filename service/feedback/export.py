"""Labelled outcomes as training data: the JSONL format `confidence train` reads.

Each labelled row becomes one `GradedRecord` line: the user message as `question` (a
multi-turn chat also as `messages`, documents as `context`), the served answer, the
label, `source` "feedback/<adapter>" and an id derived from the response, so the
training job's hash split applies to real traffic as to its own data. Only rows whose
text was stored can be exported: with prompt storage off (the default) the store keeps
confidences and labels but no text, and export says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.calibration.records import GradedRecord
from service.feedback.store import Outcome, OutcomeStore


class NothingToExportError(Exception):
    """There are labelled rows, but none can become a training record (the message says why)."""


# The outcome store keeps one chat per item; a scored item's documents ride in it as
# leading turns of this role, so the store needs no column for them.
DOCUMENT_ROLE = "document"


def stored_chat(turns: list[dict[str, str]], context: list[str] | None) -> list[dict[str, str]]:
    return [*({"role": DOCUMENT_ROLE, "content": doc} for doc in context or ()), *turns]


def split_stored_chat(chat: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[str] | None]:
    """(turns, context) of a stored chat."""
    context = [m["content"] for m in chat if m.get("role") == DOCUMENT_ROLE]
    return [m for m in chat if m.get("role") != DOCUMENT_ROLE], context or None


@dataclass(frozen=True)
class ExportSummary:
    written: int
    labelled: int
    without_text: int  # labelled, but stored with prompt storage off


def to_record(row: Outcome) -> GradedRecord | None:
    """The training record of a labelled row, or None when no text was stored."""
    if row.chat is None or row.answer is None or row.correct is None:
        return None
    turns, context = split_stored_chat(row.chat)
    if not turns or turns[-1].get("role") != "user":
        return None
    single = len(turns) == 1
    return GradedRecord(
        question=turns[-1]["content"],
        messages=None if single else turns,
        context=context,
        answer=row.answer,
        correct=row.correct,
        source=f"feedback/{row.adapter or 'zero_shot'}",
        id=f"feedback:{row.response_id}:{row.index}",
        meta={
            "adapter": row.adapter,
            "adapter_version": row.adapter_version,
            "method": row.method,
            "confidence": row.confidence,
            "served_at": row.served_at,
            "feedback_at": row.feedback_at,
        },
    )


def export_jsonl(
    store: OutcomeStore,
    out: Path,
    *,
    adapter: str | None = None,
    since: float | None = None,
    trusted_only: bool = False,
) -> ExportSummary:
    """Write every exportable labelled row (feedback received at or after `since`) to `out`.

    Raises:
        NothingToExportError: labelled rows exist but none has stored text (nothing written).
        FeedbackStoreError: the store could not be read.
    """
    rows = store.outcomes(labelled_since=since, adapter=adapter, trusted_only=trusted_only)
    records = [record for record in map(to_record, rows) if record is not None]
    without_text = sum(1 for r in rows if r.chat is None or r.answer is None)
    summary = ExportSummary(written=len(records), labelled=len(rows), without_text=without_text)
    if rows and not records:
        raise NothingToExportError(
            f"{len(rows)} labelled responses, but no question/answer text was stored for "
            f"{without_text} of them (CONFIDENCE_FEEDBACK_STORE_PROMPTS was off when they were "
            "served): nothing to export"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record.to_json() + "\n")
    return summary
