"""`confidence feedback export`: labelled outcomes as the training job's graded JSONL."""

from __future__ import annotations

import pytest

from adapters.data import read_graded_jsonl
from service.cli import main
from service.feedback.export import NothingToExportError, export_jsonl
from service.feedback.store import Label, ServedItem, ServedResponse, open_store


def serve(store, rid, *, chat, answer, adapter="unc", correct=None):
    item = ServedItem(index=0, confidence=0.7, chat=chat, answer=answer)
    store.record(ServedResponse(rid, "generate", "adapter", adapter, "v1", 100.0, (item,)))
    if correct is not None:
        store.add_feedback([Label(rid, None, correct)], now=200.0)


@pytest.fixture
def store(_feedback_db_in_tmp):
    opened = open_store(db_url=None, db_path=_feedback_db_in_tmp)
    yield opened
    opened.close()


def user(text):
    return [{"role": "user", "content": text}]


def test_export_writes_records_the_training_job_reads(store, tmp_path):
    serve(store, "g1", chat=user("Who wrote Hamlet?"), answer="Shakespeare", correct=True)
    serve(store, "g2", chat=user("2+2?"), answer="5", correct=False)
    serve(store, "g3", chat=user("unlabelled"), answer="x")
    chat = [{"role": "system", "content": "be brief"}, *user("capital?")]
    serve(store, "g4", chat=chat, answer="Paris", correct=True)
    serve(store, "g5", chat=user("other adapter"), answer="y", adapter="other", correct=True)
    out = tmp_path / "train.jsonl"
    summary = export_jsonl(store, out, adapter="unc")
    assert (summary.written, summary.labelled, summary.without_text) == (3, 3, 0)
    records = {r.question: r for r in read_graded_jsonl(out)}
    assert set(records) == {"Who wrote Hamlet?", "2+2?", "capital?"}
    assert records["capital?"].messages == chat and records["capital?"].chat() == chat
    assert records["Who wrote Hamlet?"].messages is None
    hamlet = records["Who wrote Hamlet?"]
    assert (hamlet.answer, hamlet.correct, hamlet.source, hamlet.id) == (
        "Shakespeare",
        True,
        "feedback/unc",
        "feedback:g1:0",
    )
    assert hamlet.meta["adapter_version"] == "v1" and hamlet.meta["confidence"] == 0.7
    assert hamlet.split in ("train", "calibration", "test")
    assert not records["2+2?"].correct


def test_export_says_clearly_when_no_text_was_stored(store, tmp_path, capsys):
    serve(store, "g1", chat=None, answer=None, correct=True)
    out = tmp_path / "train.jsonl"
    with pytest.raises(NothingToExportError, match="CONFIDENCE_FEEDBACK_STORE_PROMPTS"):
        export_jsonl(store, out)
    assert not out.exists()
    assert main(["feedback", "export", "--out", str(out)]) == 1
    assert "no question/answer text was stored" in capsys.readouterr().err


def test_cli_exports_from_the_configured_store(store, tmp_path, capsys):
    serve(store, "g1", chat=user("Who wrote Hamlet?"), answer="Shakespeare", correct=True)
    serve(store, "g2", chat=None, answer=None, correct=False)
    out = tmp_path / "train.jsonl"
    assert main(["feedback", "export", "--out", str(out), "--days", "36500"]) == 0
    assert [r.question for r in read_graded_jsonl(out)] == ["Who wrote Hamlet?"]
    assert "skipped 1 without stored text" in capsys.readouterr().err
