"""Dependencies run one way: the training job (adapters/) may import the service's shared
pieces, never the reverse, so a serving-only install needs none of the training packages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRAINING_ONLY = ("adapters", "peft", "matplotlib", "pyarrow", "tqdm")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_service_module_imports_the_training_job() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            name for name in _imported_modules(path) if name.split(".")[0] in TRAINING_ONLY
        )
        for path in sorted((ROOT / "service").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


# Blocks the training-only packages, as if the `train` extra were not installed.
_BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked for the test: " + name)
        return None
sys.meta_path.insert(0, Block())
import service.app, service.cli
assert service.cli.build_parser().parse_args(["serve"]).command == "serve"
print("ok")
"""


def test_service_imports_without_the_training_extras() -> None:
    code = _BLOCKER.format(blocked=set(TRAINING_ONLY) - {"adapters"})
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
