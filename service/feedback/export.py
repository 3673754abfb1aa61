"""Labelled outcomes as training data: the JSONL format `confidence train` reads.

Each labelled row becomes one `adapters.data.GradedRecord` line: the user message as
`question`, the served answer, the label, `source` "feedback/<adapter>" and an id derived
from the response, so the training job's hash split applies to real traffic as to its own
data. Only rows whose text was stored can be exported: with prompt storage off (the
default) the store keeps confidences and labels but no text, and export says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from service.calibration.records import GradedRecord
from service.feedback.store import Outcome, OutcomeStore


class NothingToExportError(Exception):
    """There are labelled rows, but none can become a training record (the message says why)."""


@dataclass(frozen=True)
class ExportSummary:
    written: int
    labelled: int
    without_text: int  # labelled, but stored with prompt storage off
    multi_turn: int  # a chat the training format (one user message) cannot hold


def to_record(row: Outcome) -> GradedRecord | None:
    """The training record of a labelled row, or None when its question cannot be one."""
    if row.chat is None or row.answer is None or row.correct is None:
        return None
    if len(row.chat) != 1 or row.chat[0].get("role") != "user":
        return None
    return GradedRecord(
        question=row.chat[0]["content"],
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
    store: OutcomeStore, out: Path, *, adapter: str | None = None, since: float | None = None
) -> ExportSummary:
    """Write every exportable labelled row (feedback received at or after `since`) to `out`.

    Raises:
        NothingToExportError: labelled rows exist but none has stored text (nothing written).
        FeedbackStoreError: the store could not be read.
    """
    rows = store.outcomes(labelled_since=since, adapter=adapter)
    records = [record for record in map(to_record, rows) if record is not None]
    without_text = sum(1 for r in rows if r.chat is None or r.answer is None)
    summary = ExportSummary(
        written=len(records),
        labelled=len(rows),
        without_text=without_text,
        multi_turn=len(rows) - len(records) - without_text,
    )
    if rows and not records:
        raise NothingToExportError(
            f"{len(rows)} labelled responses, but no question/answer text was stored for "
            f"{without_text} of them (CONFIDENCE_FEEDBACK_STORE_PROMPTS was off when they were "
            f"served) and {summary.multi_turn} are multi-turn chats: nothing to export"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(record.to_json() + "\n")
    return summary
