"""The deployment's nginx gateway (deploy/gateway/confidence.conf) in front of the real
service (`confidence serve` with the embedded model and the shipped adapter), on loopback.

Every test uses its own API key, so one test's rate-limit bucket never affects another.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx
import pytest

from tests.e2e.conftest import SAME_READ_ABS
from tests.gateway import Gateway

pytestmark = pytest.mark.e2e

CLIENTS = ("plain", "generate", "oversize", "burst", "bystander", "internal", "reqid", "retry", "openai")
KEYS = {name: secrets.token_hex(24) for name in CLIENTS}


def auth(client: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[client]}"}


def upstream_of(base_url: str) -> str:
    return base_url.removeprefix("http://")


@pytest.fixture(scope="module")
def gateway(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(
        tmp_path_factory.mktemp("gateway"),
        upstreams=[upstream_of(server)],
        api_keys={key: name for name, key in KEYS.items()},
    )
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def error_type(response: httpx.Response) -> str:
    return str(response.json()["error"]["type"])


def test_no_or_unknown_key_is_401(gateway: Gateway) -> None:
    payload = {"prompt": "What is 2 + 2?"}
    for headers in ({}, {"Authorization": "Bearer not-a-key"}, {"X-API-Key": "not-a-key"}):
        response = httpx.post(f"{gateway.url}/generate", json=payload, headers=headers, timeout=10)
        assert response.status_code == 401, (headers, response.text)
        assert error_type(response) == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.headers["X-Request-ID"]


def test_good_key_reaches_the_service_and_gets_a_confidence(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.url}/generate",
        json={"prompt": "What is the capital of France?", "max_tokens": 16},
        headers=auth("generate"),
        timeout=300,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "calibrated_head"  # the default of a version with a head (v9)
    assert body["adapter"]["name"] == "smollm2-135m-uncertainty"
    assert 0.0 <= body["confidence"] <= 1.0
    # X-API-Key is the other accepted way to present a key.
    ready = httpx.get(f"{gateway.url}/ready", headers={"X-API-Key": KEYS["plain"]}, timeout=10)
    assert ready.status_code == 200, ready.text


def test_openai_client_through_the_gateway_gets_confidences_streamed(gateway: Gateway) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEYS["openai"], timeout=300, max_retries=0)
    model = client.models.list().data[0].id
    question = [{"role": "user", "content": "What is the capital of France?"}]
    plain = client.chat.completions.create(model=model, messages=question, max_tokens=16, temperature=0)
    assert 0.0 <= plain.choices[0].confidence["value"] <= 1.0
    chunks = list(
        client.chat.completions.create(
            model=model, messages=question, max_tokens=16, temperature=0, stream=True
        )
    )
    assert len(chunks) > 3  # passed on chunk by chunk, not as one buffered body
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain.choices[0].message.content
    assert chunks[-1].choices[0].confidence["value"] == pytest.approx(
        plain.choices[0].confidence["value"], abs=SAME_READ_ABS
    )
    stranger = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        stranger.models.list()
    assert refused.value.body["type"] == "authentication_error"


def test_oversized_body_is_413_before_the_service(gateway: Gateway) -> None:
    big = {"prompt": "x" * (2 << 20)}
    response = httpx.post(f"{gateway.url}/generate", json=big, headers=auth("oversize"), timeout=30)
    assert response.status_code == 413
    assert error_type(response) == "request_too_large"


def test_burst_over_the_per_key_limit_is_429_with_retry_after(gateway: Gateway) -> None:
    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            return await asyncio.gather(*(client.get("/ready", headers=auth("burst")) for _ in range(60)))

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    limited = [r for r in responses if r.status_code == 429]
    # 10 r/s with a burst of 20: 60 requests in well under a second cannot all pass.
    assert len(limited) >= 20, codes
    assert codes.count(200) >= 10, codes
    for response in limited:
        assert response.headers["Retry-After"] == "1"
        assert error_type(response) == "rate_limited"
    # The limit is per key: another client is unaffected.
    other = httpx.get(f"{gateway.url}/ready", headers=auth("bystander"), timeout=10)
    assert other.status_code == 200


def raw_request(gateway: Gateway, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """Send the path exactly as written (httpx would normalize it)."""
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    try:
        conn.request(method, path, body=b"{}", headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/metrics", 404),
        ("GET", "/metrics/", 404),
        ("GET", "/%6Detrics", 404),
        ("GET", "//metrics", 404),
        ("GET", "/x/../metrics", 404),
        ("GET", "/admin/adapters", 404),
        ("POST", "/admin/adapters/reload", 404),
        ("POST", "/adapters/smollm2-135m-uncertainty/reload", 403),
        ("PUT", "/adapters/new", 403),
        ("DELETE", "/adapters/smollm2-135m-uncertainty", 403),
    ],
)
def test_internal_routes_are_not_reachable_even_with_a_key(
    gateway: Gateway, method: str, path: str, status: int
) -> None:
    code, body = raw_request(gateway, method, path, auth("internal"))
    assert code == status, body
    # The gateway's own answer, not one the service produced.
    assert json.loads(body)["error"]["type"] == {404: "not_found", 403: "forbidden"}[status]


def test_adapter_listing_passes_and_admin_token_does_not_open_admin(gateway: Gateway) -> None:
    listing = httpx.get(f"{gateway.url}/adapters", headers=auth("internal"), timeout=10)
    assert listing.status_code == 200, listing.text
    assert listing.json()["default"].startswith("smollm2-135m-uncertainty@")
    # Even a caller that knows an admin token gets the gateway's 404, not the admin API.
    code, body = raw_request(
        gateway, "POST", "/admin/adapters", {"X-API-Key": KEYS["internal"], "Authorization": "Bearer x"}
    )
    assert code == 404 and json.loads(body)["error"]["type"] == "not_found"


def test_request_id_is_propagated_and_echoed(gateway: Gateway) -> None:
    given = httpx.get(
        f"{gateway.url}/ready", headers={**auth("reqid"), "X-Request-ID": "req-42.a"}, timeout=10
    )
    assert given.status_code == 200
    assert given.headers["X-Request-ID"] == "req-42.a"
    made = httpx.get(f"{gateway.url}/ready", headers=auth("reqid"), timeout=10)
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    # A header that is not a sane token is replaced, not copied into logs and upstream.
    unsafe = httpx.get(f"{gateway.url}/ready", headers={**auth("reqid"), "X-Request-ID": "a b"}, timeout=10)
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["X-Request-ID"])
    # Errors produced by the gateway itself carry it too.
    denied = httpx.get(f"{gateway.url}/metrics", headers={"X-Request-ID": "req-43"}, timeout=10)
    assert denied.headers["X-Request-ID"] == "req-43"
    logged = [json.loads(line) for line in gateway.access_log.read_text().splitlines()]
    entry = next(e for e in logged if e["request_id"] == "req-42.a")
    assert entry["client"] == "reqid" and entry["upstream_status"] == "200"
    assert KEYS["reqid"] not in gateway.access_log.read_text()


class Unavailable(BaseHTTPRequestHandler):
    """A replica that answers 503 to everything and records what reached it."""

    seen: ClassVar[list[tuple[str, str, dict[str, str]]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        Unavailable.seen.append((self.command, self.path, dict(self.headers)))
        body = b'{"error":{"type":"stub_unavailable","message":"stub","param":null}}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def stub_replica() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def two_replica_gateway(
    server: str, stub_replica: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """Round robin over a replica that always answers 503 and the real one. max_fails=0
    keeps the failing replica in rotation so every other request meets it."""
    gw = Gateway(
        tmp_path_factory.mktemp("gateway2"),
        upstreams=[f"{stub_replica} max_fails=0", f"{upstream_of(server)} max_fails=0"],
        api_keys={KEYS["retry"]: "retry"},
    )
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def test_reads_are_retried_on_another_replica_writes_are_not(two_replica_gateway: Gateway) -> None:
    Unavailable.seen.clear()
    url, headers = two_replica_gateway.url, auth("retry")
    reads = [httpx.get(f"{url}/ready", headers=headers, timeout=30) for _ in range(4)]
    assert [r.status_code for r in reads] == [200] * 4
    gets_at_stub = [s for s in Unavailable.seen if s[0] == "GET"]
    assert gets_at_stub, "round robin never sent a read to the failing replica"

    item = {"items": [{"question": "What is 2 + 2?", "answer": "4"}], "method": "zero_shot"}
    writes = [httpx.post(f"{url}/score", json=item, headers=headers, timeout=300) for _ in range(4)]
    from_stub = [w for w in writes if w.status_code == 503]
    posts_at_stub = [s for s in Unavailable.seen if s[0] == "POST"]
    # Each POST the failing replica saw came back to the caller as its 503: none was re-sent.
    assert from_stub and len(from_stub) == len(posts_at_stub)
    assert all(error_type(w) == "stub_unavailable" for w in from_stub)
    assert all(w.status_code == 200 for w in writes if w not in from_stub)
    # What reaches a replica: the request id and client name, never the key.
    _, _, seen_headers = posts_at_stub[0]
    lowered = {k.lower(): v for k, v in seen_headers.items()}
    assert lowered["x-confidence-client"] == "retry"
    assert lowered["x-request-id"]
    assert "authorization" not in lowered and "x-api-key" not in lowered


def test_gateway_health_needs_no_key(gateway: Gateway) -> None:
    response = httpx.get(f"{gateway.url}/gateway/health", timeout=10)
    assert response.status_code == 200 and response.json() == {"status": "ok"}
