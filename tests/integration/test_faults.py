"""Faults on the real engine (tiny model, real HTTP): time limit, client disconnect,
adapter files deleted while served.

`unfinished()` reads vLLM's own count of requests it is still working on, so these tests
see whether the engine really stopped, not only whether the HTTP handler returned.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from bench.common import serve_app
from service.app import build_app
from service.calibration import query as cq
from service.engine.base import LoRA, SamplingOptions
from service.errors import AdapterUnavailableError
from tests.integration.conftest import started_engine, tiny_settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

LONG = 400  # tokens: about the longest answer the tiny settings allow (512 context - 64 reserve - prompt)
PROMPT = "Tell me a very long story about a dragon."


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tiny_model: Path, adapter_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """One LoRA slot and one host-memory slot: every switch between alpha and beta makes
    vLLM re-read an adapter from disk, which is when deleted files used to kill the engine."""
    root = tmp_path_factory.mktemp("faults") / "adapters"
    shutil.copytree(adapter_root, root)
    async with started_engine(tiny_model, max_loras=1) as engine:
        settings = tiny_settings(
            tiny_model,
            root,
            default_adapter="alpha",
            max_loras=1,
            max_cpu_loras=1,
            max_tokens_limit=LONG,
            feedback_db_path=root.parent
            / "feedback.sqlite3",  # module scope: set here, not by the env fixture
        )
        app = build_app(settings, engine=engine)
        async with serve_app(app, engine, ready_timeout_s=300) as url:
            yield engine, url, root, app.state.deadline


def unfinished(engine) -> int:
    return engine.llm.output_processor.get_num_unfinished_requests()


async def wait_idle(engine, timeout: float) -> float:
    """Seconds until vLLM has no unfinished request (fails after `timeout`)."""
    started = time.monotonic()
    while unfinished(engine):
        assert time.monotonic() - started < timeout, f"{unfinished(engine)} requests still running"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def long_generation_s(engine) -> float:
    """How long the long answer takes when nobody stops it; the tests below need it long."""
    tok = engine.tokenizer
    ids = cq.encode_rendered(tok, cq.render(tok, [{"role": "user", "content": PROMPT}]))
    started = time.monotonic()
    result = await engine.generate(ids, SamplingOptions(max_tokens=LONG))
    took = time.monotonic() - started
    assert result.completions[0].finish_reason == "length", "the tiny model stopped early: no long request"
    return took


async def test_time_limit_is_a_504_and_aborts_the_engine_request(served):
    engine, url, _, app_deadline = served
    full = await long_generation_s(engine)
    app_deadline.timeout_s = full / 5  # the app's CONFIDENCE_REQUEST_TIMEOUT_S, shortened
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            response = await client.post("/generate", json={"prompt": PROMPT, "max_tokens": LONG})
        assert response.status_code == 504, response.text
        assert response.json()["error"]["type"] == "request_timeout"
        # Aborted: vLLM is idle well before the answer would have finished.
        assert await wait_idle(engine, timeout=full / 2) < full / 2
    finally:
        app_deadline.timeout_s = 300.0


async def test_client_disconnect_aborts_the_engine_request(served):
    engine, url, _, _ = served
    full = await long_generation_s(engine)
    async with httpx.AsyncClient(base_url=url, timeout=full / 5) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/generate", json={"prompt": PROMPT, "max_tokens": LONG})
    assert await wait_idle(engine, timeout=full / 2) < full / 2
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        assert (await client.get("/health")).status_code == 200


async def test_deleted_adapter_directory_keeps_serving_correct_confidences(served):
    _, url, root, _ = served
    items = {
        "items": [
            {"question": "What is 2 + 2?", "answer": "4"},
            {"question": "Capital of Peru?", "answer": "Lima"},
        ]
    }
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def read(adapter: str) -> list[float]:
            response = await client.post("/score", json={**items, "adapter": adapter})
            assert response.status_code == 200, response.text
            return [i["confidence"] for i in response.json()["items"]]

        before = {a: await read(a) for a in ("alpha", "beta")}
        assert before["alpha"] != pytest.approx(before["beta"], abs=1e-3)  # the switch is visible
        shutil.rmtree(root)  # every adapter directory, while both are served
        for _ in range(2):  # alternate: each read evicts the other adapter from vLLM's one slot
            for adapter in ("alpha", "beta"):
                assert await read(adapter) == pytest.approx(before[adapter], abs=1e-3)
        assert (await client.get("/health")).status_code == 200


async def test_engine_refuses_a_lora_whose_files_vanished_instead_of_dying(served, tmp_path):
    engine, url, _, _ = served
    ghost = LoRA(name="ghost", int_id=99, path=tmp_path / "ghost")
    tok = engine.tokenizer
    ids = cq.query_ids(tok, [{"role": "user", "content": "q"}], "a")
    with pytest.raises(AdapterUnavailableError):
        await engine.next_token_logprobs(ids, [1, 2], lora=ghost)
    await engine.check_health()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        assert (
            await client.post("/score", json={"items": [{"question": "q", "answer": "a"}]})
        ).status_code == 200
