"""Held-out calibration of every method, from the training job's evaluator report.

The evaluation (held-out MMLU and open-ended test sets; LoRA + Prompt, zero-shot
classifier, verbalized, self-consistency; bootstrap CIs) takes about 45 minutes on a
2-core CPU, so this script does not rerun it: it prints the report that `confidence eval`
wrote for the adapter (adapters/reports/<name>/<version>/report.json). Regenerate that
report with (as scripts/train_default_adapter does):

    confidence eval --adapter adapters/exported/smollm2-135m-uncertainty/v6 \\
        --graded adapters/graded/smollm2-135m/train_mix.jsonl \\
        --mmlu adapters/graded/smollm2-135m/mmlu.jsonl --self_consistency_k 5 --max_per_set 400

then:

    python -m bench.quality [--report PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.common import REPO, parser, publish, table

NAME = "quality"
SETS = ("mmlu_test", "open_ended_test")
METRICS = ("accuracy", "ece", "auroc", "brier", "nll")


def report_path(adapter: Path) -> Path:
    return REPO / "adapters" / "reports" / adapter.parent.name / adapter.name / "report.json"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    path: Path = args.report or report_path(args.adapter)
    data = json.loads(path.read_text())
    rows: dict[str, dict[str, Any]] = {}
    for set_name in SETS:
        for method, summary in data["eval_sets"].get(set_name, {}).items():
            values = {m: (summary.get(m) or {}).get("value") for m in METRICS}
            ci = {f"{m}_ci": (summary.get(m) or {}).get("ci") for m in ("ece", "auroc")}
            rows[f"{set_name}/{method}"] = {
                "set": set_name,
                "method": method,
                "n": summary.get("n"),
                **values,
                **ci,
            }
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return {"report": str(shown), "metadata": data["metadata"], "rows": rows}


def report(result: dict[str, Any]) -> None:
    rows = [[r["set"], r["method"], r["n"], *(r[m] for m in METRICS)] for r in result["rows"].values()]
    table(f"Held-out quality ({result['report']})", ["set", "method", "n", *METRICS], rows)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--report", type=Path, default=None, help="report.json (default: the adapter's report)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    publish(NAME, args, measure(args), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
