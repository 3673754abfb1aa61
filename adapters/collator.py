"""Graded records as query-prompt examples, and batches of them for the Trainer.

Each record becomes the prompt of `service.calibration.query.query_ids`; batches are left
padded so that every prompt ends in the last column, where the label logits are read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.calibration.query import encode_rendered, query_ids, render

if TYPE_CHECKING:
    import torch

    from adapters.data import GradedRecord


@dataclass(frozen=True)
class Example:
    """One tokenized training example."""

    input_ids: list[int]
    label: int  # 1: the proposed answer is correct (target "yes"), 0: incorrect ("no")
    # Leading positions that belong to the question and the answer (the KL region).
    prefix_len: int


def question_messages(record: GradedRecord) -> list[dict[str, str]]:
    """The chat the record's answer replies to (its messages or question, context rendered in)."""
    return record.chat()


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize_record(tokenizer: Any, record: GradedRecord) -> Example:
    question = question_messages(record)
    ids = query_ids(tokenizer, question, record.answer)
    # The question+answer part of the prompt is what the base model also sees when it
    # answers; measuring it as the shared prefix with the unqueried conversation needs
    # no knowledge of the chat template.
    unqueried = [*question, {"role": "assistant", "content": record.answer}]
    prefix = common_prefix_len(ids, encode_rendered(tokenizer, render(tokenizer, unqueried)))
    return Example(input_ids=ids, label=int(record.correct), prefix_len=prefix)


def tokenize_records(
    tokenizer: Any, records: Sequence[GradedRecord], *, max_len: int
) -> tuple[list[Example], int]:
    """Tokenized examples and the number skipped for being longer than max_len.

    Over-long prompts are dropped rather than truncated: cutting the question or the
    answer would teach the adapter to judge an answer it was not shown.
    """
    examples, skipped = [], 0
    for record in records:
        example = tokenize_record(tokenizer, record)
        if len(example.input_ids) > max_len:
            skipped += 1
            continue
        examples.append(example)
    return examples, skipped


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), left-padded so every sequence ends at the last
    column: the label logits are then read at position -1 for the whole batch."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 at each sequence's first real token, as vLLM numbers
    them; left padding would otherwise shift every position."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def prefix_mask(mask: torch.Tensor, prefix_lens: Sequence[int]) -> torch.Tensor:
    """For left-padded rows: 1 on the first prefix_len real tokens of each row."""
    import torch

    width = mask.shape[1]
    lengths = mask.sum(-1)
    columns = torch.arange(width).unsqueeze(0)
    start = (width - lengths).unsqueeze(1)
    prefix = torch.tensor(list(prefix_lens)).unsqueeze(1)
    return ((columns >= start) & (columns < start + prefix)).long()


def collate(batch: Sequence[Example]) -> dict[str, torch.Tensor]:
    """A Trainer batch: left-padded ids, their mask and positions, the labels, and the
    question+answer mask of the KL term. The query position is the last column."""
    import torch

    ids, mask = left_pad([e.input_ids for e in batch])
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": position_ids(mask),
        "labels": torch.tensor([e.label for e in batch]),
        "prefix_mask": prefix_mask(mask, [e.prefix_len for e in batch]),
    }
