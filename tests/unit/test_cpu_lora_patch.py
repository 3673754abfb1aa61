"""The segment-wise CPU LoRA ops against a per-row reference (no model needed)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from service.engine import cpu_lora_patch as ops  # noqa: E402


def reference(inputs, weights, indices):
    """Row i: inputs[i] @ weights[indices[i]].T, zeros for base rows (index -1)."""
    stacked = weights.squeeze(1)
    rows = [
        inputs[i] @ stacked[j].T if j >= 0 else torch.zeros(stacked.shape[1])
        for i, j in enumerate(indices.tolist())
    ]
    return torch.stack(rows)


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(7, 16, generator=gen)
    lora_a = torch.randn(3, 1, 4, 16, generator=gen)  # 3 adapter slots, rank 4
    indices = torch.tensor([-1, 0, 2, -1, 2, 1, -1])
    return inputs, lora_a, indices


def test_segmented_matmul_matches_reference_and_leaves_base_rows_zero(batch):
    inputs, lora_a, indices = batch
    out = ops.segmented_matmul(inputs, lora_a, indices, torch.float32)
    torch.testing.assert_close(out, reference(inputs, lora_a, indices))
    assert torch.all(out[indices < 0] == 0)


def test_upstream_gather_would_give_base_rows_the_last_adapter(batch):
    # Documents the bug being fixed: weights[-1] is the last slot, not "no adapter".
    inputs, lora_a, indices = batch
    upstream = torch.einsum("bi,boi->bo", inputs, lora_a.squeeze(1)[indices])
    assert not torch.allclose(upstream[0], torch.zeros(4))
    torch.testing.assert_close(upstream[0], inputs[0] @ lora_a[2, 0].T)


def test_shrink_then_expand_adds_only_to_lora_rows(batch):
    inputs, lora_a, indices = batch
    gen = torch.Generator().manual_seed(1)
    lora_b = torch.randn(3, 1, 16, 4, generator=gen)
    hidden = torch.zeros(7, 4)
    ops.bgmv_shrink(inputs, lora_a, hidden, indices, scaling=0.5)
    out = torch.ones(7, 16)
    ops.bgmv_expand(hidden, lora_b, out, indices, add_inputs=True)
    expected = 1 + reference(0.5 * reference(inputs, lora_a, indices), lora_b, indices)
    torch.testing.assert_close(out, expected)
    assert torch.all(out[indices < 0] == 1)  # base rows untouched


def test_sgmv_expands_per_sequence_indices_to_tokens():
    gen = torch.Generator().manual_seed(2)
    inputs = torch.randn(5, 8, generator=gen)
    lora_a = torch.randn(2, 1, 4, 8, generator=gen)
    seq_lens = torch.tensor([2, 3])
    per_seq = torch.tensor([-1, 1])
    out = torch.zeros(5, 4)
    ops.sgmv_shrink(inputs, lora_a, out, torch.tensor([0, 2]), seq_lens, per_seq, 2, 3, 5, 1.0)
    torch.testing.assert_close(out, reference(inputs, lora_a, torch.tensor([-1, -1, 1, 1, 1])))


def test_expand_slice_writes_only_its_slice(batch):
    inputs, _, indices = batch
    gen = torch.Generator().manual_seed(3)
    lora_b = torch.randn(3, 1, 6, 16, generator=gen)
    out = torch.zeros(7, 20)
    ops.bgmv_expand_slice(inputs, lora_b, out, indices, slice_offset=10, slice_size=6, add_inputs=True)
    torch.testing.assert_close(out[:, 10:16], reference(inputs, lora_b, indices))
    assert torch.all(out[:, :10] == 0) and torch.all(out[:, 16:] == 0)


def test_fix_is_registered_as_a_vllm_plugin():
    """vLLM applies the fix in its own processes only through this entry point."""
    from importlib.metadata import entry_points

    plugins = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert plugins.get("confidence_cpu_lora") == "service.engine.cpu_lora_patch:register"


@pytest.mark.parametrize("requests", [3, 40])  # fewer and more sampler indices than prompt rows
def test_prompt_logprob_rows_get_no_lora_term_when_no_adapter_has_an_output_head(requests):
    # vLLM 0.32 runs the output head over one request's prompt positions while the wrapper
    # holds one sampler index per request of the batch: rows and indices do not correspond.
    prompt_rows = torch.randn(22, 16)
    zero_head = torch.zeros(2, 1, 4, 16)  # what the logits layer holds for adapters without lm_head
    indices = torch.tensor([-1, 0] * (requests // 2) + [0] * (requests % 2))
    out = torch.full((22, 4), 7.0)
    ops.bgmv_shrink(prompt_rows, zero_head, out, indices)
    assert torch.all(out == 0)


def test_prompt_logprob_rows_with_an_output_head_adapter_are_refused_not_guessed():
    head = torch.ones(2, 1, 4, 16)
    with pytest.raises(ValueError, match="output head"):
        ops.segmented_matmul(torch.randn(22, 16), head, torch.tensor([0, -1, 0]), torch.float32)
