"""bench/docs.py rewrites only the results block of docs/benchmarks.md, from the JSON records."""

from __future__ import annotations

import json
import shutil

from bench import docs, quality
from bench.common import DEFAULT_ADAPTER


def test_results_block_is_regenerated_from_the_records(tmp_path):
    results, doc = tmp_path / "results", tmp_path / "benchmarks.md"
    shutil.copy(docs.DOC, doc)
    assert (
        quality.main(["--out", str(results / "quality.json")]) == 0
    )  # reads the shipped adapter's committed report
    assert docs.main(["--results", str(results), "--doc", str(doc)]) == 0
    text = doc.read_text()
    head, block = text.split(docs.BEGIN)
    assert head == docs.DOC.read_text().split(docs.BEGIN)[0]  # everything above is kept
    shipped = json.loads(quality.report_path(DEFAULT_ADAPTER).read_text())["eval_sets"]["mmlu_test"][
        "lora_prompt"
    ]
    row = f"| mmlu_test | lora_prompt | {shipped['accuracy']['value']:.3g} | {shipped['ece']['value']:.3g} |"
    assert row in block
    assert "_not measured yet: run `bench/run_all` (or `python -m bench.overhead`)_" in block
    assert block.rstrip().endswith(docs.END)
