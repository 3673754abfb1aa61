"""A request naming no method gets its adapter version's best: `calibrated_head` when the
version carries a head, else `adapter`; explicit methods are unchanged; everything that
records or reports a method records the one actually used (fake engine)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import build_app
from service.settings import Settings
from tests.fake_engine import FakeEngine
from tests.monitoring_helpers import stored_shadow_reads
from tests.unit.conftest import wait_ready, write_adapter
from tests.unit.test_calibrated_head import HEAD, REFERENCE

TOKEN = "default-method-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ITEMS = [{"question": "Capital of France?", "answer": "Paris"}, {"question": "7 x 8?", "answer": "54"}]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    write_adapter(root, "unc", "v2", temperature=2.0, head=HEAD, head_reference_histogram=REFERENCE)
    write_adapter(root, "plain", "v1", temperature=1.5)
    return root


@pytest.fixture
def client(root: Path, engine: FakeEngine) -> Iterator[TestClient]:
    settings = Settings(
        adapter_root=root,
        default_adapter="unc",
        default_max_tokens=4,
        max_tokens_limit=16,
        admin_token=TOKEN,
    )
    with TestClient(build_app(settings, engine=engine)) as test_client:
        wait_ready(test_client)
        yield test_client


def score(client: TestClient, **extra: object) -> dict:
    response = client.post("/score", json={"items": ITEMS, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def confidences(body: dict) -> list[float]:
    return [item["confidence"] for item in body["items"]]


def test_a_version_with_a_head_defaults_to_the_head(client):
    default = score(client)
    assert default["method"] == "calibrated_head"
    assert default["adapter"] == {"name": "unc", "version": "v2"}
    assert confidences(default) == pytest.approx(confidences(score(client, method="calibrated_head")))
    assert confidences(default) != pytest.approx(confidences(score(client, method="adapter")))


def test_a_version_without_a_head_defaults_to_the_adapter(client, engine):
    default = score(client, adapter="plain")
    assert default["method"] == "adapter"
    assert confidences(default) == pytest.approx(
        confidences(score(client, adapter="plain", method="adapter"))
    )
    assert "prompt_logprobs" not in [kind for kind, _ in engine.calls]  # no head, no likelihood read


def test_explicit_methods_behave_as_before(client):
    assert score(client, method="adapter")["method"] == "adapter"
    zero = score(client, method="zero_shot")
    assert zero["method"] == "zero_shot" and zero["adapter"] is None
    refused = client.post("/score", json={"items": ITEMS, "adapter": "plain", "method": "calibrated_head"})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "method"
    # A head-less adapter, named or not, is never a 400 for a request that names no method.
    assert client.post("/generate", json={"prompt": "hi", "adapter": "plain"}).status_code == 200


def test_the_method_follows_the_version_the_request_got(client):
    assert score(client)["method"] == "calibrated_head"
    switched = client.put("/admin/adapters/default", json={"adapter": "plain"}, headers=AUTH)
    assert switched.status_code == 200, switched.text
    after = score(client)
    assert (after["method"], after["adapter"]["name"]) == ("adapter", "plain")


def test_generate_plain_and_streamed_default_to_the_head_with_the_same_confidence(client, engine):
    plain = client.post("/generate", json={"prompt": "capital of France?"}).json()
    assert plain["method"] == "calibrated_head"
    with client.stream("POST", "/generate", json={"prompt": "capital of France?", "stream": True}) as r:
        frames = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    final = json.loads(frames[-2])
    assert final["method"] == "calibrated_head" and final["text"] == plain["text"]
    # Both read the sampled tokens' log-probs: no prefill, the same confidence.
    assert "prompt_logprobs" not in [kind for kind, _ in engine.calls]
    assert final["confidence"] == pytest.approx(plain["confidence"])
    assert all("logprobs" not in json.loads(f) for f in frames[:-1])  # not asked, not shown


def test_openai_routes_default_per_version(client):
    question = [{"role": "user", "content": "capital of France?"}]
    body = {"model": "fake-model", "messages": question, "max_tokens": 4, "temperature": 0}
    head = client.post("/v1/chat/completions", json=body).json()
    assert head["choices"][0]["confidence"]["method"] == "calibrated_head"
    assert head["choices"][0]["logprobs"] is None  # read for the head, not returned unasked
    plain = client.post("/v1/chat/completions", json={**body, "adapter": "plain"}).json()
    assert plain["choices"][0]["confidence"]["method"] == "adapter"


def stored_methods(client: TestClient) -> dict[str, str]:
    client.app.state.monitor.writer.wait_handled(5.0)
    path = client.app.state.settings.feedback_db_path
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT response_id, method FROM confidence_outcomes").fetchall())


def test_store_metrics_and_reports_record_the_method_used(client):
    head = client.post("/generate", json={"prompt": "2+2?"}).json()
    plain = client.post("/generate", json={"prompt": "2+2?", "adapter": "plain"}).json()
    assert stored_methods(client) == {head["id"]: "calibrated_head", plain["id"]: "adapter"}
    for response in (head, plain):
        assert client.post("/feedback", json={"id": response["id"], "correct": True}).status_code == 200

    registry = client.app.state.monitor.metrics.registry
    requests = {"endpoint": "/generate", "adapter": "unc", "code": "200"}
    count = registry.get_sample_value
    assert count("confidence_requests_total", {**requests, "method": "calibrated_head"}) == 1
    assert count("confidence_requests_total", {**requests, "method": "adapter"}) is None
    served = {"adapter": "unc", "version": "v2", "method": "calibrated_head"}
    assert registry.get_sample_value("confidence_served_confidence_count", served) == 1
    assert registry.get_sample_value("confidence_psi_window_samples", served) == 1  # the head's drift window

    report = client.get("/calibration", params={"window": "1h"}).json()
    assert (report["adapter"], report["method"], report["n"]) == ("unc", "calibrated_head", 1)
    report = client.get("/calibration", params={"window": "1h", "adapter": "plain"}).json()
    assert (report["adapter"], report["method"], report["n"]) == ("plain", "adapter", 1)
    # Naming the method still reports that method's rows only.
    report = client.get("/calibration", params={"window": "1h", "method": "adapter"}).json()
    assert (report["method"], report["n"]) == ("adapter", 0)


def test_decisions_and_the_labelling_queue_use_the_method_used(client):
    decided = client.post("/score", json={"items": ITEMS, "abstain_below": 0.5}).json()
    assert decided["method"] == "calibrated_head"
    registry = client.app.state.monitor.metrics.registry
    labels = {"adapter": "unc", "version": "v2", "method": "calibrated_head"}
    counted = sum(registry.get_sample_value("confidence_decisions_total", {**labels, "decision": d}) or 0
                  for d in ("answer", "abstain"))  # fmt: skip
    assert counted == len(ITEMS)

    queue = client.get("/feedback/queue", headers=AUTH).json()
    assert (queue["adapter"], queue["version"], queue["method"]) == ("unc", "v2", "calibrated_head")
    assert {item["id"] for item in queue["items"]} == {decided["id"]}
    plain = client.get("/feedback/queue", params={"adapter": "plain"}, headers=AUTH).json()
    assert (plain["method"], plain["items"]) == ("adapter", [])


def load(client: TestClient, root: Path, version: str, **manifest: object) -> None:
    write_adapter(root, "unc", version, temperature=3.0, **manifest)
    loaded = client.post("/admin/adapters", json={"name": "unc", "version": version}, headers=AUTH)
    assert loaded.status_code == 201, loaded.text


@pytest.mark.parametrize(("head", "method"), [(True, "calibrated_head"), (False, "adapter")])
def test_a_shadow_reads_with_the_served_method_when_it_can(client, root, engine, head, method):
    load(client, root, "v3", **({"head": HEAD} if head else {}))
    attached = client.put("/admin/shadow", json={"adapter": "unc@v3", "fraction": 1.0}, headers=AUTH)
    assert attached.status_code == 200, attached.text
    served = score(client)
    assert served["method"] == "calibrated_head" and served["adapter"]["version"] == "v2"
    rows = stored_shadow_reads(client.app.state.settings.feedback_db_path, len(ITEMS))
    assert {(v, m) for v, m, _ in rows} == {("v3", method)}
    # The shadow's confidences are what the candidate gives those items with that method.
    own = score(client, adapter="unc@v3", method=method)
    assert [c for _, _, c in rows] == pytest.approx(confidences(own))
    if head:  # both heads read the answers' likelihood once, one prefill per item
        engine.calls.clear()
        score(client)
        assert [kind for kind, _ in engine.calls].count("prompt_logprobs") == len(ITEMS)

    for index in range(len(ITEMS)):
        label = {"id": served["id"], "index": index, "correct": index == 0}
        assert client.post("/feedback", json=label).status_code == 200
    (comparison,) = client.get("/calibration", params={"window": "1h"}).json()["shadow"]
    assert (comparison["candidate"], comparison["method"], comparison["n"]) == ("unc@v3", method, 2)
