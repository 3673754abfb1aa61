"""/score items as {question|messages, answer, context}: one rendering (query.question_chat)
for serving, the graded record and the feedback export."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.app import build_app
from service.calibration import query as cq
from service.calibration.records import DataFormatError, GradedRecord, read_graded_jsonl
from service.feedback.export import export_jsonl
from service.feedback.store import open_store
from tests.unit.conftest import wait_ready

DOCS = ["Paris is the capital of France.", "France is in Europe."]


def scores(client: TestClient, *items: dict) -> list[float]:
    response = client.post("/score", json={"items": list(items)})
    assert response.status_code == 200, response.json()
    return [item["confidence"] for item in response.json()["items"]]


def test_context_is_rendered_into_the_last_user_turn():
    chat = cq.question_chat(
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "capital?"}],
        context=DOCS,
    )
    assert chat[0] == {"role": "system", "content": "be brief"}
    assert chat[1]["content"] == (
        "Documents:\n[1] Paris is the capital of France.\n[2] France is in Europe.\n\ncapital?"
    )
    assert cq.question_chat(question="capital?") == [{"role": "user", "content": "capital?"}]
    with pytest.raises(ValueError, match="exactly one"):
        cq.question_chat(question="a", messages=[{"role": "user", "content": "b"}])
    with pytest.raises(ValueError, match="end with a user turn"):
        cq.question_chat(messages=[{"role": "assistant", "content": "b"}])


def test_score_items_with_messages_and_context(client):
    plain, as_chat, with_docs, docs_by_hand, multi_turn = scores(
        client,
        {"question": "capital of France?", "answer": "Paris"},
        {"messages": [{"role": "user", "content": "capital of France?"}], "answer": "Paris"},
        {"question": "capital of France?", "answer": "Paris", "context": DOCS},
        {"question": cq.render_context("capital of France?", DOCS), "answer": "Paris"},
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "capital of France?"},
            ],
            "answer": "Paris",
        },
    )
    assert as_chat == plain
    assert with_docs == docs_by_hand and with_docs != plain
    assert multi_turn != plain


@pytest.mark.parametrize(
    "item, param",
    [
        ({"question": "q", "messages": [{"role": "user", "content": "q"}], "answer": "a"}, "items[0]"),
        ({"answer": "a"}, "items[0]"),
        ({"messages": [{"role": "assistant", "content": "q"}], "answer": "a"}, "items[0].messages"),
        ({"question": "q", "answer": "a", "context": "not a list"}, "items[0].context"),
    ],
)
def test_bad_items_are_400_naming_the_field(client, item, param):
    response = client.post("/score", json={"items": [item]})
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_graded_records_carry_messages_and_context(tmp_path):
    turns = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "capital?"}]
    record = GradedRecord(question="capital?", answer="Paris", correct=True, messages=turns, context=DOCS)
    plain = GradedRecord(question="capital?", answer="Paris", correct=True)
    assert "messages" not in plain.to_dict() and "context" not in plain.to_dict()
    path = tmp_path / "graded.jsonl"
    path.write_text(record.to_json() + "\n" + plain.to_json() + "\n")
    back, back_plain = read_graded_jsonl(path)
    assert back.messages == turns and back.context == DOCS
    assert back.chat() == cq.question_chat(messages=turns, context=DOCS)
    assert back_plain.chat() == [{"role": "user", "content": "capital?"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({**plain.to_dict(), "messages": [{"role": "assistant", "content": "x"}]}) + "\n"
    )
    with pytest.raises(DataFormatError, match="messages"):
        read_graded_jsonl(bad)


def test_feedback_export_keeps_messages_and_context(settings, engine, tmp_path):
    settings = settings.model_copy(update={"feedback_store_prompts": True})
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    turns.append({"role": "user", "content": "capital?"})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        scored = client.post(
            "/score",
            json={
                "items": [
                    {"messages": turns, "answer": "Paris", "context": DOCS},
                    {"question": "q", "answer": "a"},
                ]
            },
        ).json()
        for index in (0, 1):
            assert (
                client.post(
                    "/feedback", json={"id": scored["id"], "index": index, "correct": True}
                ).status_code
                == 200
            )
    store = open_store(db_url=None, db_path=settings.feedback_db_path)
    try:
        export_jsonl(store, tmp_path / "out.jsonl")
    finally:
        store.close()
    chat, plain = read_graded_jsonl(tmp_path / "out.jsonl")
    assert (chat.messages, chat.context, chat.question) == (turns, DOCS, "capital?")
    assert chat.meta["confidence"] == scored["items"][0]["confidence"]
    assert (plain.messages, plain.context, plain.question) == (None, None, "q")
