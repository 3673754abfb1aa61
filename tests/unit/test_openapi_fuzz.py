"""Schemathesis against the service's own OpenAPI spec (fake engine, in-process ASGI).

Every operation, admin ones included (with the token), gets generated valid and
invalid requests; no response may be a 5xx, and every response must be documented and
match its schema. Examples are bounded so the whole run stays well under a minute.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import build_app
from service.settings import Settings
from tests.fake_engine import FakeEngine
from tests.unit.conftest import write_adapter

TOKEN = "fuzz-admin"
EXAMPLES = 60  # per operation and mode: 12 operations x 2 modes x 60 runs in about a minute
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory):
    root: Path = tmp_path_factory.mktemp("fuzz") / "adapters"
    write_adapter(root, "default-unc", "v1", temperature=2.0)
    write_adapter(root, "other", "v1")
    write_adapter(root, "other", "v2")
    settings = Settings(
        adapter_root=root,
        default_adapter="default-unc",
        admin_token=TOKEN,
        max_score_items=8,
        default_max_tokens=4,
        max_tokens_limit=16,
        query_reserve_tokens=16,
        max_body_bytes=64 * 1024,
        feedback_db_path=root.parent / "feedback.sqlite3",  # module scope: before the autouse env fixture
    )
    app = build_app(settings, engine=FakeEngine())
    # A too-large body is refused with 413, which is as much a rejection as a 400.
    rejected = ["400", "401", "403", "404", "405", "409", "413", "415", "422", "429"]
    config = schemathesis.Config.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": rejected}}}
    )
    # Loading the spec also starts the app's lifespan (kept for the rest of the process).
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    with asgi.get_client(app) as client:
        deadline = time.monotonic() + 10
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "fake app not ready"
            time.sleep(0.01)
    return schema


def operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_no_server_errors_and_responses_conform(api_schema, mode):
    found = operations(api_schema)
    assert {op.path for op in found} >= {
        "/generate",
        "/score",
        "/admin/adapters",
        "/health",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
    }
    for operation in found:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
        )
        def call(case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=CHECKS)

        try:
            call()
        except Unsatisfiable:
            # Nothing to make invalid (GET /health has no input); every other operation has.
            assert mode is schemathesis.GenerationMode.NEGATIVE and not operation.body, operation.path
