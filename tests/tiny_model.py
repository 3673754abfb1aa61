"""A tiny random Llama model directory for integration tests.

It reuses the embedded model's tokenizer (ChatML template, the real label tokens) so
the query template is exercised exactly as in production, while the network itself is
small enough to train and serve in seconds. vLLM's CPU attention needs head_dim >= 64,
hence 128 hidden units over 2 heads.
"""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_cache_path

EMBEDDED_MODEL_DIR = user_cache_path("confidence-service") / "models" / "SmolLM2-135M-Instruct"


def tokenizer_source() -> Path | None:
    """The local tokenizer the tiny model copies, or None when the embedded model is absent."""
    return EMBEDDED_MODEL_DIR if (EMBEDDED_MODEL_DIR / "tokenizer.json").is_file() else None


def build_tiny_model(out_dir: Path, *, seed: int = 0, dtype: str = "float32") -> Path:
    """Write a random 2-layer Llama (hidden 128, 2 heads of 64) plus tokenizer to out_dir.

    Raises:
        FileNotFoundError: no local tokenizer to copy (the embedded model is not fetched).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    source = tokenizer_source()
    if source is None:
        raise FileNotFoundError(f"no local tokenizer: fetch the embedded model into {EMBEDDED_MODEL_DIR}")
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # Larger than Llama's 0.02 so that label logits of a random model are not all ~0
        # and an adapter's effect is visible above numerical noise.
        initializer_range=0.1,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
