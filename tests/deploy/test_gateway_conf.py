"""The gateway's limits against the service's own (the behaviour itself is tested for real
in tests/e2e/test_gateway.py)."""

from __future__ import annotations

import re

from service.settings import Settings
from tests.deploy.conftest import REPO

CONF = (REPO / "deploy/gateway/confidence.conf").read_text()


def directive(name: str) -> str:
    (value,) = re.findall(rf"^\s*{name}\s+(\S+);", CONF, re.MULTILINE)
    return value


def test_gateway_waits_longer_than_the_service_time_limit() -> None:
    # Otherwise nginx answers 504 first and the service's abort of the engine work is unseen.
    read_s = int(directive("proxy_read_timeout").removesuffix("s"))
    assert Settings().request_timeout_s < read_s <= Settings().request_timeout_s + 60


def test_gateway_body_limit_is_not_above_the_service_limit() -> None:
    assert directive("client_max_body_size") == "1m"
    assert Settings().body_limit() >= 1 << 20
