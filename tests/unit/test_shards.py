"""Labelling shards: disjoint parts of one item list, merged back with validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.labelling import main as label_main
from adapters.shards import merge_shards, parse_shard, shard_items, shard_path
from service.calibration.records import DataFormatError, GradedRecord, read_graded_jsonl


def test_shards_are_disjoint_and_cover_the_items() -> None:
    items = list(range(10))
    parts = [shard_items(items, (i, 3)) for i in range(3)]
    assert sorted(x for part in parts for x in part) == items
    assert all(not set(a) & set(b) for i, a in enumerate(parts) for b in parts[i + 1 :])


@pytest.mark.parametrize("spec", ["1", "3/3", "-1/2", "a/b", "1/0"])
def test_bad_shard_specs_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="shard"):
        parse_shard(spec)


def write_shard(out: Path, shard: tuple[int, int], ids: list[str]) -> None:
    records = [GradedRecord(question=f"q {i}", answer="a", correct=True, id=i, source="s") for i in ids]
    shard_path(out, shard).write_text("".join(r.to_json() + "\n" for r in records))


def test_merge_writes_every_shard_and_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "mix.jsonl"
    write_shard(out, (0, 2), ["a", "c"])
    write_shard(out, (1, 2), ["b"])
    assert label_main(["--out", str(out), "--merge-shards", "2"]) == 0
    assert [r.id for r in read_graded_jsonl(out)] == ["a", "c", "b"]
    assert json.loads((tmp_path / "mix.summary.json").read_text())["total"]["count"] == 3


def test_merge_refuses_missing_and_overlapping_shards(tmp_path: Path) -> None:
    out = tmp_path / "mix.jsonl"
    write_shard(out, (0, 2), ["a"])
    with pytest.raises(FileNotFoundError, match="shard-1-of-2"):
        merge_shards(out, 2)
    write_shard(out, (1, 2), ["a"])
    with pytest.raises(DataFormatError, match="'a' is in both"):
        merge_shards(out, 2)
    assert not out.exists()
