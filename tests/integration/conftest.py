"""Real vLLM on a tiny random Llama built locally (seconds to start, same code path)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio

from service.calibration import query as cq
from service.calibration.query import QUERY_TEMPLATE_VERSION
from service.engine.base import LoRA
from service.lora.manifest import AdapterManifest, weights_fingerprint
from service.settings import Settings
from tests.tiny_model import build_tiny_model

pytestmark = pytest.mark.integration


def make_random_lora(
    model_dir: Path,
    out: Path,
    *,
    seed: int,
    scale: float = 0.5,
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    layers: list[int] | None = None,
) -> Path:
    """A peft LoRA (r=8, q/v of every layer unless told) with random non-zero B, so it
    visibly changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=8, lora_alpha=16, target_modules=list(target_modules), layers_to_transform=layers, lora_dropout=0.0
    )
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data = torch.randn(param.shape, generator=generator) * scale
    peft_model.save_pretrained(out)
    return out


def fill_lora_b(adapter: Path, value: float) -> Path:
    """Set every lora_B weight of a saved adapter to `value` (NaN, or huge to overflow)."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = adapter / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: torch.full_like(v, value) if "lora_B" in k else v for k, v in tensors.items()}, weights)
    return adapter


def write_manifest(adapter_dir: Path, model_dir: Path, name: str, version: str, temperature: float) -> None:
    from transformers import AutoTokenizer

    labels = cq.label_tokens(AutoTokenizer.from_pretrained(model_dir))
    AdapterManifest(
        name=name,
        version=version,
        base_model={"name": "tiny-llama", "weights_sha256": weights_fingerprint(model_dir)},
        template_version=QUERY_TEMPLATE_VERSION,
        label_token_ids={"no": labels.no_id, "yes": labels.yes_id},
        temperature=temperature,
    ).write(adapter_dir)


def tiny_settings(model: Path, root: Path, **overrides: object) -> Settings:
    """Service settings sized for the tiny model: small context and KV cache, two LoRA slots."""
    fields: dict[str, object] = {
        "model": str(model),
        "adapter_root": root,
        "max_model_len": 512,
        "kv_cache_gib": 0.25,
        "max_loras": 2,
        "max_lora_rank": 8,
        "default_max_tokens": 8,
        "query_reserve_tokens": 64,
        # Module-scoped servers start before the per-test autouse fixture: keep their
        # feedback next to their adapter root, never in the user's data directory.
        "feedback_db_path": root.parent / "feedback.sqlite3",
    }
    return Settings.model_validate({**fields, **overrides})


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def adapter_root(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    for seed, name in ((1, "alpha"), (2, "beta")):
        out = make_random_lora(tiny_model, root / name / "v1", seed=seed)
        write_manifest(out, tiny_model, name, "v1", temperature=1.5)
    return root


@asynccontextmanager
async def started_engine(model: Path, *, max_loras: int) -> AsyncIterator[object]:
    """A VLLMEngine on the tiny model, started, shut down on exit."""
    from service.engine.vllm_engine import VLLMEngine

    eng = VLLMEngine(str(model), max_model_len=512, max_loras=max_loras, max_lora_rank=8, kv_cache_gib=0.25)
    await eng.start()
    try:
        yield eng
    finally:
        eng.shutdown()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine(tiny_model: Path) -> AsyncIterator[object]:
    # max_loras=1 is the configuration in which the upstream CPU bug showed: one LoRA
    # slot, base rows mapped to "no adapter" in the same batch.
    async with started_engine(tiny_model, max_loras=1) as eng:
        yield eng


def lora(adapter_root: Path, name: str, int_id: int) -> LoRA:
    return LoRA(name=name, int_id=int_id, path=adapter_root / name / "v1")
