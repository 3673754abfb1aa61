"""A throwaway PostgreSQL server for tests: initdb into a temporary directory, serve on a
free loopback port, stop with `immediate` and delete. PostgreSQL refuses to run as root,
so as root the server runs as the `postgres` user that Debian's package creates."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from glob import glob
from pathlib import Path

import pytest

_DATA_DIRS: dict[str, Path] = {}  # URL -> data directory of a running test server


def _binary(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        pytest.fail(f"{name} not found: scripts/setup installs PostgreSQL (Debian package 'postgresql')")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(args: list[str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}")


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yields a postgresql:// URL of a fresh, empty server."""
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="confidence-pg-"))
    if as_user:
        shutil.chown(root, "postgres")
    data, port = root / "data", _free_port()
    _run([*as_user, _binary("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
    options = f"-k {root} -p {port} -c listen_addresses=127.0.0.1"
    pg_ctl = [*as_user, _binary("pg_ctl"), "-D", str(data)]
    _run([*pg_ctl, "-o", options, "-w", "-l", str(root / "log"), "start"])
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    _DATA_DIRS[url] = data
    try:
        yield url
    finally:
        _DATA_DIRS.pop(url, None)
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], check=False, capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _server_pids(data: Path) -> list[int]:
    """The postmaster (first line of postmaster.pid) and every process it forked."""
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process exited meanwhile
        if int(fields[1]) == postmaster:  # fields[1] is the parent pid
            pids.append(int(stat.parent.name))
    return pids


@contextmanager
def paused(url: str) -> Iterator[None]:
    """SIGSTOP every process of the test server at `url` (it accepts TCP connections in the
    kernel but never answers, as a hung or overloaded database does); SIGCONT on exit."""
    pids = _server_pids(_DATA_DIRS[url])
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
