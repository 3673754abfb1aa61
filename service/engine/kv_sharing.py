"""Prefix-cache sharing between the base model and adapters that cannot change its KV cache.

Why this exists
---------------
vLLM keys every KV-cache block of a LoRA request by the adapter (its name and path),
because a LoRA on an attention projection, or on any layer below one, changes the keys
and values that layer stores. The confidence read runs prompt + answer + query through
the adapter right after the base model generated that answer, so it pays a second full
prefill of prompt and answer: on a CPU that is most of the confidence overhead
(docs/benchmarks.md, "overhead profile").

An adapter whose LoRA weights all sit in the MLP of the model's *last* decoder layer
changes nothing that any attention layer reads: each layer's keys and values are computed
from that layer's input, and the last MLP's output only reaches the final norm and the
output head. For such an adapter the base model's cached blocks are exactly the blocks
the adapter would compute, token for token, so this plugin leaves vLLM's adapter key out
of their hashes. The read then finds prompt + answer in the cache and prefills only the
query (about 30 tokens), and a base-model read finds the adapter's blocks just the same.
Every other adapter keeps vLLM's keys unchanged, so it can never be served another
model's KV.

How it is applied
-----------------
`register()` runs in each vLLM process (the `confidence_cpu_lora` general plugin calls
it, on CPU and GPU). The model's depth is taken from the scheduler's config when vLLM
builds the scheduler (in the engine core, after it loaded the plugins); until then, and
on vLLM versions this was not checked against, nothing is shared.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHECKED_VLLM_VERSIONS = ("0.32.",)
# PEFT's tensor names: base_model.model.model.layers.29.mlp.down_proj.lora_A.weight
_MLP_LORA = re.compile(r"\.layers\.(\d+)\.mlp\.[A-Za-z0-9_]+\.lora_[AB]\.weight$")

# Decoder layers of the served model, set in the engine core when its scheduler is built.
_model_depth: int | None = None


def lora_tensor_names(adapter_dir: Path) -> list[str]:
    """Tensor names of a PEFT adapter's safetensors file (read from its header only)."""
    from safetensors import safe_open

    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as weights:
        return list(weights.keys())


def preserves_kv_cache(tensor_names: list[str], config: dict[str, Any], num_layers: int) -> bool:
    """True when every LoRA tensor adapts an MLP projection of the last of num_layers layers.

    Anything else (an attention projection, a lower layer, DoRA magnitudes, saved full
    modules, an unknown naming scheme) counts as changing the KV cache.
    """
    if not tensor_names or config.get("use_dora") or config.get("modules_to_save"):
        return False
    last = num_layers - 1
    for name in tensor_names:
        match = _MLP_LORA.search(name)
        if match is None or int(match.group(1)) != last:
            return False
    return True


@functools.lru_cache(maxsize=256)
def _adapter_preserves_kv(adapter_path: str, num_layers: int, mtime_ns: int) -> bool:
    # mtime_ns is part of the cache key: a directory rewritten in place is checked again.
    del mtime_ns
    adapter_dir = Path(adapter_path)
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        names = lora_tensor_names(adapter_dir)
    except (OSError, ValueError) as err:  # unreadable: share nothing, let vLLM report it
        log.debug("kv sharing: cannot inspect %s: %s", adapter_path, err)
        return False
    shared = preserves_kv_cache(names, config, num_layers)
    if shared:
        log.info("confidence: adapter %s (last MLP only) shares the base prefix cache", adapter_path)
    return shared


def adapter_shares_base_kv(adapter_path: str, num_layers: int | None) -> bool:
    """Whether blocks computed under this adapter equal the base model's (see module doc)."""
    if num_layers is None or not adapter_path:
        return False
    try:
        mtime_ns = (Path(adapter_path) / "adapter_model.safetensors").stat().st_mtime_ns
    except OSError:
        return False
    return _adapter_preserves_kv(adapter_path, num_layers, mtime_ns)


def model_depth(vllm_config: Any) -> int | None:
    """The served model's number of decoder layers, from vLLM's config (None if unknown)."""
    text_config = getattr(getattr(vllm_config, "model_config", None), "hf_text_config", None)
    layers = getattr(text_config, "num_hidden_layers", None)
    return layers if isinstance(layers, int) and layers > 0 else None


def patch_applies() -> bool:
    """Whether this vLLM is a version the patch was checked against (else nothing is shared)."""
    import vllm

    return vllm.__version__.startswith(CHECKED_VLLM_VERSIONS)


def apply() -> bool:
    """Patch vLLM's LoRA block-hash keys and record the depth at scheduler start."""
    if not patch_applies():
        return False
    from vllm.v1.core import kv_cache_utils
    from vllm.v1.core.sched.scheduler import Scheduler

    if getattr(kv_cache_utils._gen_lora_extra_hash_keys, "_confidence_kv_sharing", False):
        return True  # vLLM loads general plugins more than once per process
    vllm_keys = kv_cache_utils._gen_lora_extra_hash_keys

    def lora_keys(request: Any) -> list[tuple[str, str, str]]:
        lora = request.lora_request
        if lora is not None and adapter_shares_base_kv(lora.lora_path, _model_depth):
            return []
        return vllm_keys(request)

    lora_keys._confidence_kv_sharing = True  # type: ignore[attr-defined]
    kv_cache_utils._gen_lora_extra_hash_keys = lora_keys
    scheduler_init = Scheduler.__init__

    @functools.wraps(scheduler_init)
    def init(self: Any, vllm_config: Any, *args: Any, **kwargs: Any) -> None:
        global _model_depth
        _model_depth = model_depth(vllm_config)
        scheduler_init(self, vllm_config, *args, **kwargs)

    Scheduler.__init__ = init  # type: ignore[method-assign]
    return True


def register() -> None:
    """vLLM general-plugin entry point (runs in every vLLM process)."""
    if apply():
        log.debug("confidence: prefix-cache sharing for last-layer MLP adapters installed")
