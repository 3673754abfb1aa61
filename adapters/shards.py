"""Labelling sharded over processes or machines, and the merge of the shards.

`confidence label --shard i/n` labels every n-th of the configured items, starting at the
i-th, into `<out stem>.shard-i-of-n.jsonl`: n processes (one vLLM engine each, e.g. one per
GPU or per tensor-parallel group: data parallelism) label disjoint parts of the same item
list, each resumable on its own. `confidence label --merge-shards n` then validates the n
files and writes their records into the output file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from service.calibration.records import DataFormatError, read_graded_jsonl

T = TypeVar("T")


def parse_shard(spec: str) -> tuple[int, int]:
    """(i, n) from "i/n" with 0 <= i < n; ValueError names the bad spec."""
    index, sep, count = spec.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit():
        raise ValueError(f"--shard expects I/N (e.g. 0/4), got {spec!r}")
    i, n = int(index), int(count)
    if not 0 <= i < n:
        raise ValueError(f"--shard {spec!r}: need 0 <= I < N")
    return i, n


def shard_items(items: Sequence[T], shard: tuple[int, int]) -> list[T]:
    """Every n-th item from the i-th: the shards of one item list are disjoint and cover it."""
    i, n = shard
    return list(items[i::n])


def shard_path(out_path: Path, shard: tuple[int, int]) -> Path:
    i, n = shard
    return out_path.with_name(f"{out_path.stem}.shard-{i}-of-{n}{out_path.suffix}")


def merge_shards(out_path: Path, n: int) -> int:
    """Write the records of out_path's n shard files into out_path (atomically); returns
    how many. Every shard is validated by the graded-record reader first.

    Raises:
        FileNotFoundError: a shard file is missing.
        DataFormatError: an invalid line, or an id labelled in two shards.
    """
    paths = [shard_path(out_path, (i, n)) for i in range(n)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing shard files: {', '.join(missing)}")
    seen: dict[str, Path] = {}
    lines = []
    for path in paths:
        for record in read_graded_jsonl(path):
            if record.id in seen:
                raise DataFormatError(f"{record.id!r} is in both {seen[record.id]} and {path}")
            seen[record.id] = path
            lines.append(record.to_json() + "\n")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.writelines(lines)
    os.replace(tmp, out_path)
    return len(lines)
