from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import build_app
from service.calibration.query import QUERY_TEMPLATE_VERSION
from service.lora.manifest import AdapterManifest
from service.settings import Settings
from tests.fake_engine import FakeEngine


def write_lora_files(path: Path, *, rank: int = 8, extra_tensors: tuple[str, ...] = ()) -> None:
    """PEFT files with the right names and shapes (the fake engine never reads the values)."""
    import numpy as np
    from safetensors.numpy import save_file

    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 16}))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors = {
        f"{prefix}.lora_A.weight": np.zeros((rank, 4), dtype=np.float32),
        f"{prefix}.lora_B.weight": np.zeros((4, rank), dtype=np.float32),
        **{name: np.zeros((2, 2), dtype=np.float32) for name in extra_tensors},
    }
    save_file(tensors, str(path / "adapter_model.safetensors"))


def write_adapter(
    root: Path, name: str, version: str, *, temperature: float = 1.0, rank: int = 8, **overrides
) -> Path:
    """An adapter directory as the training job exports it: manifest plus PEFT files."""
    path = root / name / version
    path.mkdir(parents=True)
    write_lora_files(path, rank=rank)
    fields = {
        "name": name,
        "version": version,
        "base_model": {"name": "fake", "weights_sha256": "0" * 64},
        "template_version": QUERY_TEMPLATE_VERSION,
        "label_token_ids": {"no": 1, "yes": 2},
        "temperature": temperature,
    }
    fields.update(overrides)
    AdapterManifest.model_validate(fields).write(path)
    return path


def wait_ready(client: TestClient, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, client.get("/ready").json()
        time.sleep(0.01)


@pytest.fixture
def adapter_root(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    write_adapter(root, "default-unc", "v1", temperature=2.0)
    write_adapter(root, "other", "v1")
    return root


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def settings(adapter_root: Path) -> Settings:
    return Settings(
        adapter_root=adapter_root,
        default_adapter="default-unc",
        max_score_items=8,
        default_max_tokens=4,
        max_tokens_limit=16,
        query_reserve_tokens=16,
    )


@pytest.fixture
def client(settings: Settings, engine: FakeEngine) -> Iterator[TestClient]:
    with TestClient(build_app(settings, engine=engine)) as test_client:
        wait_ready(test_client)
        yield test_client
