"""Which adapters may share the base model's prefix cache (tensor names only, no model)."""

from __future__ import annotations

import pytest

from service.engine.kv_sharing import adapter_shares_base_kv, preserves_kv_cache


def names(layer: int, *modules: str) -> list[str]:
    prefix = f"base_model.model.model.layers.{layer}"
    return [f"{prefix}.{module}.lora_{ab}.weight" for module in modules for ab in "AB"]


MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def test_lora_on_the_last_layers_mlp_preserves_the_kv_cache():
    assert preserves_kv_cache(names(29, *MLP), {}, num_layers=30)


@pytest.mark.parametrize(
    ("tensors", "why"),
    [
        (names(28, *MLP), "a lower layer's MLP feeds the last layer's attention"),
        (names(29, "self_attn.v_proj"), "an attention projection writes the cache"),
        (names(29, *MLP) + names(3, "self_attn.q_proj"), "one attention tensor is enough"),
        ([*names(29, *MLP), "base_model.model.model.layers.29.mlp.up_proj.lora_magnitude_vector"], "DoRA"),
        (["base_model.model.lm_head.lora_A.weight"], "unknown naming"),
        ([], "no tensors at all"),
    ],
)
def test_anything_else_keeps_its_own_cache(tensors, why):
    assert not preserves_kv_cache(tensors, {}, num_layers=30), why


def test_dora_and_saved_modules_in_the_config_keep_their_own_cache():
    assert not preserves_kv_cache(names(29, *MLP), {"use_dora": True}, num_layers=30)
    assert not preserves_kv_cache(names(29, *MLP), {"modules_to_save": ["lm_head"]}, num_layers=30)


def test_unknown_depth_or_missing_files_share_nothing(tmp_path):
    assert not adapter_shares_base_kv(str(tmp_path), None)
    assert not adapter_shares_base_kv(str(tmp_path), 30)  # no adapter_model.safetensors
    assert not adapter_shares_base_kv("", 30)


def test_a_saved_adapter_is_read_from_its_files(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    def saved(sub: str, tensors: list[str]) -> str:
        out = tmp_path / sub
        out.mkdir()
        save_file({name: torch.zeros(2, 2) for name in tensors}, out / "adapter_model.safetensors")
        (out / "adapter_config.json").write_text("{}")
        return str(out)

    assert adapter_shares_base_kv(saved("mlp", names(1, *MLP)), 2)
    assert not adapter_shares_base_kv(saved("attn", names(1, "self_attn.q_proj")), 2)
