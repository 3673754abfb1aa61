"""The report writes its three files with one row per method."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adapters import report


def _results() -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for name, n in (("mmlu_test", 200), ("open_ended_test", 150)):
        y = rng.integers(0, 2, size=n).astype(float)
        good = np.clip(0.5 + 0.35 * (y - 0.5) + rng.normal(0, 0.15, size=n), 0, 1)
        out[name] = {
            "lora_prompt": (good, y),
            "zero_shot": (rng.uniform(size=n), y),
            "verbalized": (np.full(n, 0.9), y),
        }
    return out


def test_write_report_files_and_rows(tmp_path: Path) -> None:
    out = report.write_report(_results(), tmp_path / "rep", metadata={"model": "tiny", "seed": 0}, n_boot=50)
    rep = tmp_path / "rep"
    assert {p.name for p in rep.iterdir()} == {"report.json", "report.md", "reliability.png"}
    assert (rep / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    loaded = json.loads((rep / "report.json").read_text())
    assert loaded == out
    assert loaded["metadata"] == {"model": "tiny", "seed": 0}
    assert set(loaded["eval_sets"]) == {"mmlu_test", "open_ended_test"}
    mmlu = loaded["eval_sets"]["mmlu_test"]
    assert mmlu["zero_shot"]["delta_auroc_vs_baseline"] is None
    delta = mmlu["lora_prompt"]["delta_auroc_vs_baseline"]
    assert delta["ci_low"] > 0.1
    assert delta["estimate"] == pytest.approx(
        mmlu["lora_prompt"]["auroc"]["value"] - mmlu["zero_shot"]["auroc"]["value"]
    )
    # constant confidence: AUROC 0.5, ECE = |acc - 0.9|
    assert mmlu["verbalized"]["auroc"]["value"] == pytest.approx(0.5)

    md = (rep / "report.md").read_text()
    assert "## mmlu_test" in md and "## open_ended_test" in md
    assert "ΔAUROC vs zero_shot" in md
    for method in ("lora_prompt", "zero_shot", "verbalized"):
        assert md.count(f"| {method} | ") == 2
    assert f"| lora_prompt | 200 | {mmlu['lora_prompt']['accuracy']['value']:.3f} |" in md


def test_unpaired_labels_are_flagged_not_paired(tmp_path: Path) -> None:
    y = np.array([0.0, 1.0, 0.0, 1.0])
    results = {
        "s": {
            "zero_shot": (np.array([0.2, 0.4, 0.6, 0.8]), y),
            "lora_prompt": (np.array([0.1, 0.9, 0.2, 0.8]), 1 - y),
        }
    }
    out = report.write_report(results, tmp_path, metadata={}, n_boot=20)
    delta = out["eval_sets"]["s"]["lora_prompt"]["delta_auroc_vs_baseline"]
    assert delta["estimate"] is None and delta["note"] == "labels differ from baseline"
    assert "labels differ from baseline" in (tmp_path / "report.md").read_text()


def test_one_class_set_writes_valid_json(tmp_path: Path) -> None:
    results = {
        "s": {
            "zero_shot": (np.array([0.3, 0.6]), np.ones(2)),
            "lora_prompt": (np.array([0.9, 0.8]), np.ones(2)),
        }
    }
    out = report.write_report(results, tmp_path, metadata={}, n_boot=20)
    json.loads((tmp_path / "report.json").read_text())
    assert out["eval_sets"]["s"]["lora_prompt"]["auroc"]["value"] is None
    assert out["eval_sets"]["s"]["lora_prompt"]["delta_auroc_vs_baseline"]["estimate"] is None
    assert "n/a" in (tmp_path / "report.md").read_text()
