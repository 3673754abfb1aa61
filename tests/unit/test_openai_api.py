"""The OpenAI-compatible API on the fake engine: shapes (parsed by the official `openai`
client), confidences, errors, streaming order, and aborts when a client leaves."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from service.app import build_app
from service.engine.base import StreamDelta
from tests.fake_engine import FakeEngine
from tests.http_server import serve_in_thread
from tests.unit.conftest import wait_ready

MODEL = "fake-model"  # the fake engine's model directory name: the served model id
CHAT = [{"role": "user", "content": "capital of France"}]


def sse_events(text: str) -> list[dict | str]:
    """The data of each server-sent event; "[DONE]" stays a string."""
    out: list[dict | str] = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        assert frame.startswith("data: "), frame
        data = frame[len("data: ") :]
        out.append(data if data == "[DONE]" else json.loads(data))
    return out


@pytest.fixture
def client_oa(client: TestClient) -> openai.OpenAI:
    """The official client, talking to the in-process app through the test client."""
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)


def score_of(client: TestClient, question: str, answer: str) -> float:
    response = client.post("/score", json={"items": [{"question": question, "answer": answer}]})
    return float(response.json()["items"][0]["confidence"])


def test_models_lists_the_base_model_and_each_adapter_version(client_oa):
    models = client_oa.models.list().data
    assert models[0].id == MODEL and getattr(models[0], "parent", None) is None
    adapters = {m.id: m for m in models[1:]}
    assert set(adapters) == {"default-unc@v1", "other@v1"}
    assert all(m.parent == MODEL for m in adapters.values())


def test_chat_choices_carry_the_confidence_score_gives_for_the_same_answer(client, client_oa):
    completion = client_oa.chat.completions.create(model=MODEL, messages=CHAT, n=2, max_tokens=3)
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL and completion.system_fingerprint
    assert [c.index for c in completion.choices] == [0, 1]
    for choice in completion.choices:
        confidence = choice.confidence  # an extra field the client keeps
        assert confidence["method"] == "adapter" and confidence["adapter"] == "default-unc@v1"
        assert confidence["feedback"] == {"id": completion.id, "index": choice.index}
        expected = score_of(client, CHAT[0]["content"], choice.message.content)
        assert confidence["value"] == pytest.approx(expected, abs=1e-12)
        assert choice.finish_reason == "length"
    assert completion.usage.completion_tokens == 6
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 6


def test_extra_body_chooses_adapter_and_method(client_oa):
    other = client_oa.chat.completions.create(
        model=MODEL, messages=CHAT, extra_body={"adapter": "other"}, max_tokens=2
    )
    assert other.choices[0].confidence["adapter"] == "other@v1"
    zero = client_oa.chat.completions.create(
        model=MODEL, messages=CHAT, extra_body={"method": "zero_shot"}, max_tokens=2
    )
    assert zero.choices[0].confidence["adapter"] is None
    assert zero.choices[0].confidence["method"] == "zero_shot"
    # An adapter entry of /v1/models as `model`: the answer is the base model's, read by that adapter.
    pinned = client_oa.chat.completions.create(model="other@v1", messages=CHAT, max_tokens=2)
    assert pinned.choices[0].confidence["adapter"] == "other@v1"
    assert pinned.choices[0].message.content == other.choices[0].message.content


def test_unknown_fields_are_ignored(client):
    body = {"model": MODEL, "messages": CHAT, "presence_penalty": 0.5, "tools": [], "whatever": {"x": 1}}
    assert client.post("/v1/chat/completions", json=body).status_code == 200


def test_errors_use_openai_shape_and_native_status(client, client_oa):
    with pytest.raises(openai.NotFoundError) as missing:
        client_oa.chat.completions.create(model="gpt-4o", messages=CHAT)
    assert missing.value.body == {
        "message": f"The model `gpt-4o` does not exist; this server serves `{MODEL}`",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    with pytest.raises(openai.BadRequestError) as bad:
        client_oa.chat.completions.create(model=MODEL, messages=CHAT, temperature=3)
    assert bad.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as too_many:
        client_oa.chat.completions.create(model=MODEL, messages=CHAT, max_completion_tokens=17, max_tokens=2)
    assert too_many.value.body["param"] == "max_completion_tokens"
    with pytest.raises(openai.NotFoundError) as no_adapter:
        client_oa.chat.completions.create(model=MODEL, messages=CHAT, extra_body={"adapter": "nope"})
    assert no_adapter.value.body["code"] == "adapter_not_found"
    assistant_last = client.post(
        "/v1/chat/completions",
        json={"model": MODEL, "messages": [*CHAT, {"role": "assistant", "content": "x"}]},
    )
    assert assistant_last.status_code == 400 and assistant_last.json()["error"]["param"] == "messages"
    not_json = client.post("/v1/completions", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and set(not_json.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }
    assert client.get("/v1/nothing").json()["error"]["type"] == "invalid_request_error"
    # The native API keeps its own shape.
    assert "code" not in client.post("/generate", json={"prompt": "x", "temperature": 3}).json()["error"]


def test_more_choices_than_admitted_is_429_with_retry_after(settings, engine):
    settings = settings.model_copy(update={"max_inflight_sequences": 2})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        refused = client.post("/v1/chat/completions", json={"model": MODEL, "messages": CHAT, "n": 3})
        assert refused.status_code == 429 and refused.headers["Retry-After"]
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert (
            client.post("/v1/chat/completions", json={"model": MODEL, "messages": CHAT, "n": 2}).status_code
            == 200
        )


def test_completions_logprobs_and_stop(client_oa):
    plain = client_oa.completions.create(model=MODEL, prompt="capital of France", max_tokens=4, logprobs=2)
    choice = plain.choices[0]
    assert plain.object == "text_completion"
    assert choice.logprobs.tokens and len(choice.logprobs.tokens) == 4
    assert choice.logprobs.text_offset[1] == len(choice.logprobs.tokens[0])
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    assert 0.0 <= choice.confidence["value"] <= 1.0
    stopped = client_oa.completions.create(
        model=MODEL, prompt="capital of France", max_tokens=4, stop=["France"]
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert "France" not in stopped.choices[0].text and stopped.choices[0].text


def test_chat_logprobs(client_oa):
    completion = client_oa.chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=3, logprobs=True, top_logprobs=3
    )
    content = completion.choices[0].logprobs.content
    assert "".join(t.token for t in content) == completion.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 for t in content)


def test_a_stream_sends_text_then_each_confidence_then_usage_then_done(client):
    body = {"model": MODEL, "messages": CHAT, "n": 2, "max_tokens": 3, "temperature": 0}
    plain = client.post("/v1/chat/completions", json=body).json()
    streamed = client.post(
        "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_events(streamed.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"] == plain["usage"]
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        last = mine[-1]
        assert last["finish_reason"] == "length" and last["delta"] == {}
        assert all(c["confidence"] is None and c["finish_reason"] is None for c in mine[:-1])
        text = "".join(c["delta"].get("content", "") for c in mine)
        assert text == plain["choices"][index]["message"]["content"]
        assert last["confidence"]["value"] == pytest.approx(
            plain["choices"][index]["confidence"]["value"], abs=1e-9
        )
        assert last["confidence"]["feedback"] == {"id": chunks[0]["id"], "index": index}


def test_the_official_client_parses_streams(client_oa):
    stream = client_oa.completions.create(model=MODEL, prompt="capital of France", max_tokens=3, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks)
    assert text and chunks[-1].choices[0].finish_reason == "length"
    assert 0.0 <= chunks[-1].choices[0].confidence["value"] <= 1.0


def test_streamed_confidence_can_get_feedback(client, client_oa):
    chunks = list(client_oa.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=2, stream=True))
    feedback = chunks[-1].choices[0].confidence["feedback"]
    recorded = client.post("/feedback", json={**feedback, "correct": True})
    assert recorded.status_code == 200 and recorded.json()["recorded"] == 1


def test_native_generate_streams_in_the_same_order(client):
    body = {"prompt": "capital of France", "max_tokens": 3}
    plain = client.post("/generate", json=body).json()
    events = sse_events(client.post("/generate", json={**body, "stream": True}).text)
    assert events[-1] == "[DONE]"
    *deltas, final = events[:-1]
    assert "".join(d["text"] for d in deltas) == plain["text"] == final["text"]
    assert final["confidence"] == pytest.approx(plain["confidence"], abs=1e-12)
    assert final["id"] == deltas[0]["id"] and final["usage"] == plain["usage"]
    assert client.post("/feedback", json={"id": final["id"], "correct": False}).status_code == 200


def test_a_stream_past_the_deadline_ends_with_an_error_frame(settings):
    engine = FakeEngine()
    engine.token_latency_s = 0.5
    settings = settings.model_copy(update={"request_timeout_s": 0.3})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        body = {"model": MODEL, "messages": CHAT, "max_tokens": 8, "stream": True}
        events = sse_events(client.post("/v1/chat/completions", json=body).text)
        assert events[-1] == "[DONE]"
        assert events[-2]["error"]["code"] == "request_timeout"
        assert engine.streams_aborted == 1 and engine.streams_in_flight == 0
        assert client.app.state.admission.in_flight == 0


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/generate"])
def test_a_client_that_leaves_mid_stream_aborts_its_engine_work(settings, path):
    engine = FakeEngine()
    engine.token_latency_s = 0.2
    app = build_app(settings, engine=engine)
    body = {"max_tokens": 16, "stream": True}
    body |= {"model": MODEL, "messages": CHAT} if path.startswith("/v1") else {"prompt": "capital of France"}
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=10) as http:
        with http.stream("POST", path, json=body) as response:
            lines = response.iter_lines()
            assert any(line.startswith("data: ") for line in lines)  # the stream has begun
            wait_for(lambda: engine.streams_in_flight == 1)
        # Leaving the block closes the connection before the 16 tokens (3.2 s) are done.
        wait_for(lambda: engine.streams_aborted == 1)
        assert engine.streams_in_flight == 0
        wait_for(lambda: app.state.admission.in_flight == 0)


def test_metrics_label_the_new_endpoints(client):
    client.post("/v1/chat/completions", json={"model": MODEL, "messages": CHAT})
    client.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    registry = client.app.state.monitor.metrics.registry
    chat = {"endpoint": "/v1/chat/completions", "method": "adapter", "adapter": "default-unc", "code": "200"}
    assert registry.get_sample_value("confidence_requests_total", chat) == 1
    missing = {"endpoint": "/v1/completions", "method": "adapter", "adapter": "default-unc", "code": "404"}
    assert registry.get_sample_value("confidence_requests_total", missing) == 1


class StaggeredEngine(FakeEngine):
    """Choice 1 ends only once a confidence read has begun: a server that waited for every
    choice before reading any would hang (and fail the wait below)."""

    def __init__(self) -> None:
        super().__init__()
        self.read_started: asyncio.Event | None = None

    async def generate_stream(self, prompt_ids, options, *, lora=None):
        self.read_started = asyncio.Event()
        yield StreamDelta(index=0, text="Paris", tokens=1, finish_reason="stop")
        await asyncio.wait_for(self.read_started.wait(), timeout=5)
        yield StreamDelta(index=1, text="Lyon", tokens=1, finish_reason="stop")

    async def next_token_logprobs(self, prompt_ids, token_ids, *, lora=None):
        if self.read_started is not None:
            self.read_started.set()
        return await super().next_token_logprobs(prompt_ids, token_ids, lora=lora)


def test_a_choice_is_scored_as_soon_as_it_ends(settings):
    with TestClient(build_app(settings, engine=StaggeredEngine())) as client:
        wait_ready(client)
        body = {"model": MODEL, "messages": CHAT, "n": 2, "stream": True}
        events = sse_events(client.post("/v1/chat/completions", json=body).text)
    assert all("error" not in e for e in events[:-1]), events  # no wait timed out
    choices = [e["choices"][0] for e in events[:-1]]
    order = [(c["index"], "done" if c["confidence"] else c["delta"].get("content")) for c in choices]
    assert [o for o in order if o[0] == 0] == [(0, ""), (0, "Paris"), (0, "done")]
    assert [o for o in order if o[0] == 1] == [(1, ""), (1, "Lyon"), (1, "done")]


class ShortStreamEngine(FakeEngine):
    """An engine stream that ends before its second choice does."""

    async def generate_stream(self, prompt_ids, options, *, lora=None):
        yield StreamDelta(index=0, text="Paris", tokens=1, finish_reason="stop")
        yield StreamDelta(index=1, text="Ly", tokens=1)


def test_a_stream_that_ends_early_is_an_error_not_a_hang(settings):
    with TestClient(build_app(settings, engine=ShortStreamEngine())) as client:
        wait_ready(client)
        body = {"model": MODEL, "messages": CHAT, "n": 2, "stream": True}
        events = sse_events(client.post("/v1/chat/completions", json=body).text)
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "internal_error"
