"""Who is calling: the client id the gateway puts in `X-Confidence-Client`.

The header is believed only from configured proxy addresses (the gateway), because any
other caller could write any name into it. The id is kept with every served response, so
feedback can be limited to the client that was served (or a configured labeller), and
calibration can be limited to labels from trusted labellers.

The API layer sets `current_client` once per request; the monitor reads it when it records
a served response or a label, so the routes need not thread it through every call.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from contextvars import ContextVar

CLIENT_HEADER = "x-confidence-client"
MAX_CLIENT_CHARS = 128

current_client: ContextVar[str | None] = ContextVar("confidence_client", default=None)


def is_trusted_proxy(host: str | None, proxies: Iterable[str]) -> bool:
    """Whether `host` (the peer address) is one of `proxies` (addresses or CIDR networks)."""
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host in proxies  # a non-IP peer name (a Unix socket, a test client)
    for proxy in proxies:
        try:
            if address in ipaddress.ip_network(proxy, strict=False):
                return True
        except ValueError:
            continue  # a name, compared above only for non-IP peers
    return False


def client_from(host: str | None, headers: Mapping[str, str], proxies: Iterable[str]) -> str | None:
    """The gateway's client id for a request from `host`, or None (not via a trusted proxy,
    no header, or an unusable one)."""
    proxies = list(proxies)
    if not proxies or not is_trusted_proxy(host, proxies):
        return None
    value = headers.get(CLIENT_HEADER, "").strip()
    if not value or len(value) > MAX_CLIENT_CHARS or not value.isprintable():
        return None
    return value
