"""The official `openai` client against `confidence serve` on the embedded model: every
response parses, every choice exposes its confidence, streaming matches non-streaming."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.e2e.conftest import SAME_READ_ABS

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def model(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def check_confidence(choice, response_id: str) -> dict:
    confidence = choice.confidence
    assert 0.0 <= confidence["value"] <= 1.0
    # Naming no method gets the shipped version's best: v9 carries a calibrated head.
    assert confidence["method"] == "calibrated_head" and "@" in confidence["adapter"]
    assert confidence["feedback"] == {"id": response_id, "index": choice.index}
    return confidence


def test_models_name_the_base_model_and_the_adapters(client, model):
    models = client.models.list().data
    assert model == "SmolLM2-135M-Instruct"
    assert len(models) >= 2 and all(m.parent == model for m in models[1:])


def test_chat_plain_and_streamed_agree(client, model):
    plain = client.chat.completions.create(model=model, messages=QUESTION, max_tokens=24, temperature=0)
    text = plain.choices[0].message.content
    assert "Paris" in text
    confidence = check_confidence(plain.choices[0], plain.id)
    assert plain.usage.completion_tokens > 0

    stream = client.chat.completions.create(
        model=model,
        messages=QUESTION,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1, "the text arrived in one piece"
    assert "".join(pieces) == text
    last = [c for c in chunks if c.choices][-1].choices[0]
    assert last.finish_reason == plain.choices[0].finish_reason
    assert last.confidence["value"] == pytest.approx(confidence["value"], abs=SAME_READ_ABS)
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_completions_plain_and_streamed(client, model):
    plain = client.completions.create(
        model=model, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    check_confidence(plain.choices[0], plain.id)
    chunks = list(
        client.completions.create(
            model=model, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == plain.choices[0].text
    assert chunks[-1].choices[0].confidence["value"] == pytest.approx(
        plain.choices[0].confidence["value"], abs=SAME_READ_ABS
    )


def test_two_choices_each_scored(client, model):
    completion = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=12, temperature=1.0, n=2
    )
    assert [c.index for c in completion.choices] == [0, 1]
    for choice in completion.choices:
        check_confidence(choice, completion.id)


def test_stop_and_logprobs(client, model):
    stopped = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=24, temperature=0, stop=["Paris"]
    )
    assert "Paris" not in stopped.choices[0].message.content
    assert stopped.choices[0].finish_reason == "stop"
    with_logprobs = client.chat.completions.create(
        model=model, messages=QUESTION, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2
    )
    content = with_logprobs.choices[0].logprobs.content
    # One entry per generated token, the end-of-turn token included (as vLLM's server does).
    assert len(content) == with_logprobs.usage.completion_tokens
    assert "".join(t.token for t in content).startswith(with_logprobs.choices[0].message.content)
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)


def test_bad_model_and_bad_parameter(client):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=QUESTION)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=client.models.list().data[0].id, messages=QUESTION, top_p=0)
    assert bad.value.body["param"] == "top_p"


def test_a_client_leaving_mid_stream_frees_its_sequences(server, model):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "max_tokens": 400,
        "temperature": 0,
        "stream": True,
    }
    with httpx.Client(base_url=server, timeout=300) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            seen = 0
            for line in response.iter_lines():
                seen += '"content":"' in line and '"content":""' not in line
                if seen >= 3:
                    break
        # The admission slot is released when the engine work is cancelled (aborted).
        deadline = time.monotonic() + 60
        while "confidence_inflight_sequences 0.0" not in http.get("/metrics").text:
            assert time.monotonic() < deadline, "the stream's sequence is still in flight"
            time.sleep(0.1)


def test_a_refused_option_is_a_400_before_the_stream_starts(client, model):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU engine's limitation")
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=model, messages=QUESTION, temperature=0.8, seed=7, stream=True)
    assert refused.value.body["param"] == "seed"


def test_native_generate_streams_the_same_answer_and_confidence(server):
    body = {"prompt": "What is the capital of France?", "max_tokens": 24}
    plain = httpx.post(f"{server}/generate", json=body, timeout=300).json()
    with httpx.Client(timeout=300) as http:
        response = http.post(f"{server}/generate", json={**body, "stream": True})
    frames = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line.strip()]
    assert frames[-1] == "[DONE]"
    *deltas, final = [json.loads(frame) for frame in frames[:-1]]
    assert len(deltas) > 1 and "".join(d["text"] for d in deltas) == plain["text"] == final["text"]
    assert final["confidence"] == pytest.approx(plain["confidence"], abs=SAME_READ_ABS)


def test_score_a_chat_with_documents(server):
    chat = [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    docs = ["Paris is the capital and largest city of France."]
    items = [
        {"messages": chat, "answer": "Paris"},
        {"messages": chat, "answer": "Paris", "context": docs},
        {"question": "What is the capital of France?", "answer": "Paris", "context": docs},
    ]
    response = httpx.post(f"{server}/score", json={"items": items}, timeout=300)
    assert response.status_code == 200, response.text
    chat_only, with_docs, question_with_docs = (i["confidence"] for i in response.json()["items"])
    assert len({chat_only, with_docs, question_with_docs}) == 3  # each input reaches the query
