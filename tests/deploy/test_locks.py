"""The CPU image installs deploy/docker/requirements-cpu.txt with --no-deps: every runtime
dependency of the service must be pinned there (a missing one breaks the image at run time,
as psycopg-pool would have on the first PostgreSQL connection)."""

from __future__ import annotations

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.conftest import REPO


def pinned(filename: str) -> set[str]:
    lines = (REPO / "deploy/docker" / filename).read_text().splitlines()
    return {canonicalize_name(line.split("==")[0]) for line in lines if line and not line.startswith("#")}


def test_every_serving_dependency_is_locked() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["model"]]
    names = {canonicalize_name(Requirement(r).name) for r in wanted}
    assert names <= pinned("requirements-cpu.txt"), names - pinned("requirements-cpu.txt")
