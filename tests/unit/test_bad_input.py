"""Hostile and malformed requests: every one is a 4xx in the service's error shape, never a 5xx."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.app import build_app
from tests.unit.conftest import wait_ready

JSON = {"content-type": "application/json"}


@pytest.fixture
def small_body_client(settings, engine):
    settings = settings.model_copy(update={"max_body_bytes": 4096})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        yield client


def assert_error(response, status: int, type_: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if type_ is not None:
        assert error["type"] == type_
    return error


def test_body_over_the_limit_is_413_before_parsing(small_body_client, engine):
    big = json.dumps({"prompt": "x" * 10_000})
    calls_before = len(engine.calls)  # warm-up
    error = assert_error(
        small_body_client.post("/generate", content=big, headers=JSON), 413, "payload_too_large"
    )
    assert "4096" in error["message"]
    assert len(engine.calls) == calls_before  # nothing reached the engine
    # Still serving normally afterwards.
    assert small_body_client.post("/generate", json={"prompt": "hi"}).status_code == 200


def test_streamed_body_without_content_length_is_cut_off_at_the_limit(small_body_client):
    def chunks():
        for _ in range(100):
            yield b"x" * 1000  # 100 kB, no Content-Length: counted while read

    response = small_body_client.post("/score", content=chunks(), headers=JSON)
    assert_error(response, 413, "payload_too_large")


def test_invalid_utf8_body_is_a_400(client):
    body = b'{"prompt": "caf\xc3\x28 \xff"}'
    assert_error(client.post("/generate", content=body, headers=JSON), 400, "invalid_request")


def test_malformed_json_names_the_body(client):
    error = assert_error(client.post("/generate", content=b'{"prompt": ', headers=JSON), 400)
    assert error["param"] == "body"


def test_deeply_nested_json_is_a_400(client):
    depth = 100_000  # past Python's recursion limit in json.loads
    body = ("[" * depth + "]" * depth).encode()
    assert_error(client.post("/score", content=body, headers=JSON), 400)
    nested_in_field = '{"prompt": "x", "stop": ' + "[" * 5000 + "]" * 5000 + "}"
    assert_error(client.post("/generate", content=nested_in_field, headers=JSON), 400)


@pytest.mark.parametrize(
    "fragment",
    [
        '"temperature": NaN',
        '"temperature": Infinity',
        '"top_p": -Infinity',
        '"max_tokens": 1e400',
        '"max_tokens": NaN',
        '"seed": Infinity',
    ],
)
def test_nan_and_infinity_are_400(client, fragment):
    body = '{"prompt": "x", ' + fragment + "}"
    assert_error(client.post("/generate", content=body, headers=JSON), 400, "invalid_request")


@pytest.mark.parametrize("max_tokens", [0, -1, -(2**70), 17, 2**31, 10**40])
def test_out_of_range_max_tokens_is_a_400_naming_it(client, max_tokens):
    error = assert_error(client.post("/generate", json={"prompt": "x", "max_tokens": max_tokens}), 400)
    assert error["param"] == "max_tokens"


@pytest.mark.parametrize("seed", [-1, 2**63, 10**40])
def test_seed_outside_64_bits_is_a_400(client, seed):
    error = assert_error(client.post("/generate", json={"prompt": "x", "seed": seed}), 400)
    assert error["param"] == "seed"


@pytest.mark.parametrize(
    "body",
    [
        '{"prompt": "\\ud800"}',
        '{"messages": [{"role": "user", "content": "a\\udfff b"}]}',
        '{"items": [{"question": "q", "answer": "\\ud83d"}]}',
        '{"prompt": "x", "stop": ["\\udc00"]}',
    ],
)
def test_lone_surrogates_are_a_400(client, body):
    path = "/score" if "items" in body else "/generate"
    assert_error(client.post(path, content=body, headers=JSON), 400, "invalid_request")


@pytest.mark.parametrize(
    "body",
    [
        "null",
        "[]",
        '"prompt"',
        "{}",
        '{"prompt": 5}',
        '{"prompt": "x", "stop": [""]}',
        '{"prompt": "x", "stop": "a"}',
        '{"prompt": "x", "extra": 1}',
        '{"messages": []}',
        '{"messages": [{"role": "tool", "content": "x"}]}',
        '{"prompt": "x", "adapter": "../../etc/passwd"}',
        '{"prompt": "x", "method": "magic"}',
    ],
)
def test_wrong_shapes_are_400(client, body):
    assert_error(client.post("/generate", content=body, headers=JSON), 400)


def test_wrong_content_type_and_unknown_routes_use_the_error_shape(client):
    assert_error(client.post("/generate", content=b"prompt=x", headers={"content-type": "text/plain"}), 400)
    assert_error(client.get("/no-such-endpoint"), 404, "not_found")
    assert_error(client.get("/generate"), 405, "method_not_allowed")


def test_a_repeated_query_parameter_is_a_400_naming_it(client):
    response = client.get("/calibration?window=1h&window=2h")
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "window"
