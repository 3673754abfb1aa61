"""Evaluation report: metrics with bootstrap intervals, a Markdown table and a reliability diagram.

Input is ``results[eval_set][method] = (p, y)``: confidences and correctness labels, with
every method of one eval set scored on the same items in the same order (the paired
bootstrap for ΔAUROC relies on it). Output, in ``out_dir``:

- ``report.json``: metadata plus :func:`service.calibration.metrics.summarize` per set and method, and
  the paired ΔAUROC against the baseline method;
- ``report.md``: one headline table per eval set;
- ``reliability.png``: one reliability-diagram panel per eval set, one curve per method.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from service.calibration.metrics import nan_to_none, paired_bootstrap_auroc_diff, summarize

Results = Mapping[str, Mapping[str, tuple[ArrayLike, ArrayLike]]]

BASELINE = "zero_shot"
JSON_NAME = "report.json"
MD_NAME = "report.md"
PNG_NAME = "reliability.png"


def _delta_vs_baseline(
    p: ArrayLike, y: ArrayLike, base: tuple[ArrayLike, ArrayLike] | None, *, n_boot: int, seed: int
) -> dict[str, Any] | None:
    """Paired ΔAUROC of a method over the baseline, or a reason it cannot be computed."""
    if base is None:
        return None
    p_base, y_base = np.asarray(base[0], dtype=np.float64), np.asarray(base[1], dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if ya.shape != y_base.shape or not np.array_equal(ya, y_base):
        # Unpaired items would make the paired interval meaningless; say so instead.
        return {"estimate": None, "ci_low": None, "ci_high": None, "note": "labels differ from baseline"}
    out: dict[str, Any] = dict(paired_bootstrap_auroc_diff(p, p_base, ya, n=n_boot, seed=seed))
    out["note"] = None
    return out


def build_report(
    results: Results,
    *,
    metadata: Mapping[str, Any],
    n_boot: int = 1000,
    seed: int = 0,
    baseline: str = BASELINE,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (NaN as None).

    Returns ``{"metadata": {...}, "baseline": str, "eval_sets": {set: {method:
    summarize() + {"delta_auroc_vs_baseline": {"estimate", "ci_low", "ci_high", "n_valid",
    "note"} | None}}}}``; the delta is None for the baseline itself and for sets without it.
    """
    sets: dict[str, Any] = {}
    for set_name, methods in results.items():
        base = methods.get(baseline)
        sets[set_name] = {}
        for method, (p, y) in methods.items():
            summary = summarize(p, y, n_boot=n_boot, seed=seed)
            delta = None if method == baseline else _delta_vs_baseline(p, y, base, n_boot=n_boot, seed=seed)
            summary["delta_auroc_vs_baseline"] = delta
            sets[set_name][method] = summary
    report = {"metadata": dict(metadata), "baseline": baseline, "eval_sets": sets}
    result: dict[str, Any] = nan_to_none(report)
    return result


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _fmt_ci(metric: Mapping[str, Any]) -> str:
    lo, hi = metric["ci"]
    return f"{_fmt(metric['value'])} [{_fmt(lo)}, {_fmt(hi)}]"


def _fmt_delta(delta: Mapping[str, Any] | None) -> str:
    if delta is None:
        return "—"
    if delta.get("note"):
        return f"n/a ({delta['note']})"
    return f"{_fmt(delta['estimate'], 3)} [{_fmt(delta['ci_low'])}, {_fmt(delta['ci_high'])}]"


def render_markdown(report: Mapping[str, Any]) -> str:
    """Headline tables, one per eval set: rows are methods, intervals are 95% bootstrap."""
    baseline = report["baseline"]
    lines = ["# Calibration report", ""]
    lines += ["```json", json.dumps(report["metadata"], indent=2, sort_keys=True, default=str), "```", ""]
    header = (
        "| method | n | accuracy | ECE [95% CI] | AUROC [95% CI] | Brier | NLL "
        f"| ΔAUROC vs {baseline} [95% CI] |"
    )
    for set_name, methods in report["eval_sets"].items():
        lines += [f"## {set_name}", "", header, "|" + "---|" * 8]
        for method, s in methods.items():
            cells = [
                method,
                str(s["n"]),
                _fmt(s["accuracy"]["value"]),
                _fmt_ci(s["ece"]),
                _fmt_ci(s["auroc"]),
                _fmt(s["brier"]["value"]),
                _fmt(s["nll"]["value"]),
                _fmt_delta(s["delta_auroc_vs_baseline"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        notes = {m: s["auroc_note"] for m, s in methods.items() if s["auroc_note"]}
        lines += [""] + [f"- {m}: {note}" for m, note in notes.items()] + ([""] if notes else [])
    lines.append(
        "ECE: 10 equal-width bins, last bin includes 1.0. Intervals: percentile bootstrap over items; "
        f"ΔAUROC uses a paired bootstrap (same resampled items for both methods) against {baseline}."
    )
    return "\n".join(lines) + "\n"


def plot_reliability(report: Mapping[str, Any], path: Path) -> None:
    """One panel per eval set: accuracy against mean confidence per non-empty bin, one
    curve per method, with the diagonal of perfect calibration."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sets = report["eval_sets"]
    n = max(len(sets), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    # Figure + Agg canvas directly: no pyplot global state, no display backend needed.
    fig = Figure(figsize=(4.2 * ncols, 4.0 * nrows), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (set_name, methods) in zip(axes, sets.items(), strict=False):
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
        for method, s in methods.items():
            filled = [b for b in s["reliability"] if b["count"]]
            xs = [b["mean_confidence"] for b in filled]
            ys = [b["accuracy"] for b in filled]
            ece_v = s["ece"]["value"]
            ax.plot(xs, ys, marker="o", markersize=4, label=f"{method} (ECE {_fmt(ece_v)})")
        ax.set(title=set_name, xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.set_aspect("equal")
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[len(sets) :]:
        ax.set_visible(False)
    fig.savefig(path, dpi=120)


def write_report(
    results: Results,
    out_dir: Path,
    *,
    metadata: Mapping[str, Any],
    n_boot: int = 1000,
    seed: int = 0,
    baseline: str = BASELINE,
) -> dict[str, Any]:
    """Compute the report and write report.json, report.md and reliability.png to ``out_dir``.

    Returns the report dict (as written to report.json; see :func:`build_report`).

    Raises:
        ValueError: invalid confidences or labels (see service.calibration.metrics.as_arrays).
    """
    report = build_report(results, metadata=metadata, n_boot=n_boot, seed=seed, baseline=baseline)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # allow_nan=False: a NaN that escaped nan_to_none is a bug, not valid JSON to ship.
    (out_dir / JSON_NAME).write_text(
        json.dumps(report, indent=2, allow_nan=False, default=str) + "\n", encoding="utf-8"
    )
    (out_dir / MD_NAME).write_text(render_markdown(report), encoding="utf-8")
    plot_reliability(report, out_dir / PNG_NAME)
    return report
