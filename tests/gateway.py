"""Run the deployment's nginx gateway config (deploy/gateway/confidence.conf) on loopback.

The http-context file is used as shipped; only what the deployment itself provides is
replaced: the directory of the upstream and API-key files, the access-log path and the
listen address. The surrounding main config (pid, temp paths, one worker) is the test's.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.http_server import free_port
from tests.processes import stop

REPO = Path(__file__).resolve().parent.parent
GATEWAY_CONF = REPO / "deploy" / "gateway" / "confidence.conf"
NGINX_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")


def nginx_binary() -> str:
    """Debian's nginx (scripts/setup installs it)."""
    found = shutil.which("nginx") or next((p for p in NGINX_CANDIDATES if os.access(p, os.X_OK)), None)
    if found is None:
        raise FileNotFoundError("nginx is not installed: run scripts/setup (installs Debian's nginx-light)")
    return found


def render(workdir: Path, *, port: int, upstreams: Sequence[str], api_keys: Mapping[str, str]) -> Path:
    """Write the gateway config, its upstream and key files and a main nginx.conf into workdir.

    `upstreams` are `host:port[ params]` server entries; `api_keys` maps key -> client name.
    Returns the main config path.
    """
    conf = GATEWAY_CONF.read_text()
    replacements = {
        "/etc/nginx/confidence/": f"{workdir}/",
        "/var/log/nginx/access.log": f"{workdir}/access.log",
        "listen 8080;": f"listen 127.0.0.1:{port};",
    }
    for old, new in replacements.items():
        assert old in conf, f"{GATEWAY_CONF} no longer contains {old!r}: update tests/gateway.py"
        conf = conf.replace(old, new)
    (workdir / "confidence.conf").write_text(conf)
    (workdir / "upstream.conf").write_text("".join(f"server {u};\n" for u in upstreams))
    (workdir / "api-keys.map").write_text("".join(f'"{k}" {name};\n' for k, name in api_keys.items()))
    temp = workdir / "temp"
    temp.mkdir(exist_ok=True)
    # As root nginx would run its worker as `nobody`, which cannot enter pytest's private tmp.
    user = "user root;\n" if os.geteuid() == 0 else ""
    main = workdir / "nginx.conf"
    main.write_text(
        f"{user}worker_processes 1;\n"
        f"pid {workdir}/nginx.pid;\n"
        "daemon off;\n"
        "events { worker_connections 512; }\n"
        "http {\n"
        + "".join(f"    {kind}_temp_path {temp}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi"))
        + "".join(f"    {kind}_temp_path {temp}/{kind};\n" for kind in ("uwsgi", "scgi"))
        + f"    include {workdir}/confidence.conf;\n"
        "}\n"
    )
    return main


class Gateway:
    """nginx with the gateway config, started in the foreground as a child process."""

    def __init__(self, workdir: Path, *, upstreams: Sequence[str], api_keys: Mapping[str, str]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.main_conf = render(workdir, port=self.port, upstreams=upstreams, api_keys=api_keys)
        self.error_log = workdir / "error.log"
        self.access_log = workdir / "access.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _cmd(self, *extra: str) -> list[str]:
        return [
            nginx_binary(),
            "-p",
            str(self.workdir),
            "-c",
            str(self.main_conf),
            "-e",
            str(self.error_log),
            *extra,
        ]

    def start(self, timeout: float = 10.0) -> None:
        check = subprocess.run(self._cmd("-t"), capture_output=True, text=True, check=False)
        assert check.returncode == 0, f"nginx -t failed:\n{check.stderr}"
        self.proc = subprocess.Popen(self._cmd(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"nginx exited:\n{self.error_log.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"nginx did not listen on {self.port}:\n{self.error_log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, timeout=10)
