"""The gateway's TLS option: deploy/gateway/tls.conf included by the very gateway config,
served by a real nginx with a throwaway self-signed certificate; plain HTTP still works."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.deploy.conftest import REPO
from tests.gateway import Gateway, free_port

TLS_CONF = REPO / "deploy" / "gateway" / "tls.conf"


def self_signed(directory: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(directory / "key.pem"), "-out", str(directory / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_gateway_serves_https_with_the_tls_option(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    self_signed(tls)
    port = free_port()
    conf = TLS_CONF.read_text().replace("/etc/nginx/confidence/tls/", f"{tls}/")
    assert "listen 8443 ssl;" in conf
    (tls / "tls.conf").write_text(conf.replace("listen 8443 ssl;", f"listen 127.0.0.1:{port} ssl;"))
    gateway = Gateway(tmp_path, upstreams=["127.0.0.1:9"], api_keys={"k": "client"})
    gateway.start()
    try:
        context = ssl.create_default_context(cafile=str(tls / "cert.pem"))
        context.check_hostname = False
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/gateway/health", context=context, timeout=10
        ) as r:
            assert r.status == 200 and r.headers["Strict-Transport-Security"]
        with urllib.request.urlopen(f"{gateway.url}/gateway/health", timeout=10) as r:
            assert r.status == 200
    finally:
        gateway.stop()
