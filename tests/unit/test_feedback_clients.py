"""Labels belong to a client: the gateway's X-Confidence-Client (believed only from a
trusted proxy) is stored with each served response; only that client or a configured
labeller may label it; calibration can count trusted labellers' labels only."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.app import build_app
from service.feedback.clients import client_from
from tests.unit.conftest import wait_ready

GATEWAY = "testclient"  # the peer name Starlette's test client reports


def as_client(name: str) -> dict[str, str]:
    return {"X-Confidence-Client": name}


@pytest.fixture
def gated(settings, engine) -> Iterator[TestClient]:
    settings = settings.model_copy(update={"trusted_proxies": [GATEWAY], "feedback_labellers": ["grader"]})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        yield client


def stored(client: TestClient, db_path) -> list[tuple]:
    assert client.app.state.monitor.writer.wait_handled(10.0)
    with sqlite3.connect(db_path) as conn:
        return conn.execute(
            "SELECT response_id, endpoint, client, correct, labelled_by, label_trusted "
            "FROM confidence_outcomes"
        ).fetchall()


def test_rows_are_tagged_by_endpoint_and_client(gated, settings):
    generated = gated.post("/generate", json={"prompt": "2+2?"}, headers=as_client("alice")).json()
    scored = gated.post(
        "/score", json={"items": [{"question": "q?", "answer": "a"}]}, headers=as_client("bob")
    )
    rows = {r[0]: r for r in stored(gated, settings.feedback_db_path)}
    assert rows[generated["id"]][1:3] == ("generate", "alice")
    assert rows[scored.json()["id"]][1:3] == ("score", "bob")


def test_only_the_served_client_or_a_labeller_may_label(gated, settings):
    mine = gated.post("/generate", json={"prompt": "2+2?"}, headers=as_client("alice")).json()["id"]
    other = gated.post("/generate", json={"prompt": "3+3?"}, headers=as_client("alice")).json()["id"]
    forged = gated.post("/feedback", json={"id": mine, "correct": False}, headers=as_client("mallory"))
    assert forged.status_code == 403
    assert forged.json()["error"]["type"] == "feedback_forbidden"
    anonymous = gated.post("/feedback", json={"id": mine, "correct": False})
    assert anonymous.status_code == 403
    assert (
        gated.post("/feedback", json={"id": mine, "correct": True}, headers=as_client("alice")).status_code
        == 200
    )
    assert (
        gated.post("/feedback", json={"id": other, "correct": True}, headers=as_client("grader")).status_code
        == 200
    )
    rows = {r[0]: r for r in stored(gated, settings.feedback_db_path)}
    assert rows[mine][3:] == (1, "alice", 0)
    assert rows[other][3:] == (1, "grader", 1)


def test_the_header_is_ignored_unless_it_comes_from_a_trusted_proxy(settings, engine):
    settings = settings.model_copy(update={"trusted_proxies": ["10.0.0.0/8"]})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        served = client.post("/generate", json={"prompt": "2+2?"}, headers=as_client("alice")).json()["id"]
        (row,) = stored(client, settings.feedback_db_path)
        assert row[2] is None  # a direct caller cannot claim to be someone
        # ... nor label as someone else: anonymous responses take anonymous labels.
        response = client.post("/feedback", json={"id": served, "correct": True}, headers=as_client("x"))
        assert response.status_code == 200


def test_client_ids_come_only_from_trusted_proxies():
    headers = {"x-confidence-client": "alice"}
    assert client_from("10.1.2.3", headers, ["10.0.0.0/8"]) == "alice"
    assert client_from("192.168.1.1", headers, ["10.0.0.0/8"]) is None
    assert client_from("10.1.2.3", headers, []) is None
    assert client_from("10.1.2.3", {"x-confidence-client": "a\nb"}, ["10.0.0.0/8"]) is None
    assert client_from("10.1.2.3", {"x-confidence-client": "a" * 129}, ["10.0.0.0/8"]) is None
    assert client_from("::1", headers, ["::1"]) == "alice"


def test_calibration_can_count_only_trusted_labellers(settings, engine):
    settings = settings.model_copy(
        update={
            "trusted_proxies": [GATEWAY],
            "feedback_labellers": ["grader"],
            "calibration_trusted_only": True,
        }
    )
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        ids = [
            client.post("/generate", json={"prompt": f"{i}?"}, headers=as_client("alice")).json()["id"]
            for i in range(3)
        ]
        for rid in ids[:2]:
            assert (
                client.post(
                    "/feedback", json={"id": rid, "correct": True}, headers=as_client("alice")
                ).status_code
                == 200
            )
        assert (
            client.post(
                "/feedback", json={"id": ids[2], "correct": False}, headers=as_client("grader")
            ).status_code
            == 200
        )
        report = client.get("/calibration").json()
        assert (report["n"], report["n_correct"]) == (1, 0)
        registry = client.app.state.monitor.metrics.registry
        counted = [
            sample
            for metric in registry.collect()
            if metric.name == "confidence_feedback"
            for sample in metric.samples
            if sample.name == "confidence_feedback_total" and sample.value
        ]
        assert len(counted) == 1 and counted[0].value == 1  # only the grader's label
