"""Fit the calibrated head on the calibration split, judge every method on held-out sets.

Input: the signal files of `adapters.signals_job` (calibration, test, ood, untouched). Every
method — constant (train base rate), per-source base rate, zero-shot temperature-scaled
on the calibration split, answer likelihood (sum, mean; Platt-scaled on the same
split), LoRA + Prompt as served, and the calibrated head — is scored on the same items.
Selection reads calibration (out-of-fold) and out-of-domain (COPA) numbers only; the test
file is read once, by `report`, for the version being shipped, and so is the untouched
set (SST-2), which nothing is fitted or chosen on (`--untouched-only` reads it once for
a version shipped before it existed).

Example:

    python -m adapters.heldout_eval --signals runs/signals/v6 \\
        --adapter adapters/exported/smollm2-135m-uncertainty/v6 \\
        --graded adapters/graded/smollm2-135m/train_mix.jsonl --out adapters/reports/<name>/v7
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adapters import head_fit
from adapters.data import read_graded_jsonl, stable_seed
from adapters.features import read_rows
from adapters.grading import regrade
from adapters.head_fit import Calibrators, Row
from adapters.report import write_report
from adapters.stratified import paired_stratified_auroc_diff, stratified_auroc
from service.calibration.estimator import HeadParams

log = logging.getLogger(__name__)
BASELINE = "zero_shot_ts"
OPEN_KINDS = ("open", "numeric")


def train_base_rate(graded: Sequence[Path]) -> float:
    """Share of echo-safe correct answers in the train split: the constant baseline."""
    records = [r for path in graded for r in read_graded_jsonl(path, split="train")]
    return float(np.mean([regrade(r) for r in records]))


def load_rows(signals: Path, name: str, graded: Sequence[Path], *, per_source: int = 100) -> list[Row]:
    """Signal rows of one set; rows written before they carried their answer text get it
    from the same deterministic record set the signals were read from."""
    rows = read_rows(signals / f"{name}.jsonl")
    if rows and "answer" not in rows[0]:
        from adapters.signals_job import record_set

        answers = {r.id: r.answer for r in record_set(name, graded, per_source)}
        rows = [{**row, "answer": answers[row["id"]]} for row in rows]
    return rows


def question_key(row: Row) -> str:
    return str(row["id"]).split("#")[0]


def by_question(rows: Sequence[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        out[question_key(r)].append(r)
    return out


def pairs(rows: Sequence[Row], *, seed: int = 0) -> list[Row]:
    """(question, gold) and (question, one wrong choice drawn per question) for each question."""
    out: list[Row] = []
    for key, choices in by_question(rows).items():
        gold = [r for r in choices if r["correct"]]
        wrong = [r for r in choices if not r["correct"]]
        if gold and wrong:
            out += [gold[0], wrong[stable_seed(seed, key) % len(wrong)]]
    return out


def own_answers(rows: Sequence[Row]) -> list[Row]:
    """The model's own answer per question in the no-choices format: the choice text with
    the highest sum of token log-probabilities as the reply."""
    return [max(choices, key=lambda r: r["answer_logprob_sum"]) for choices in by_question(rows).values()]


def group(rows: Sequence[Row], name: str) -> list[Row]:
    return [r for r in rows if r.get("group") == name]


def head_rows(cal: Sequence[Row]) -> list[Row]:
    """What the head is fitted on: the model's own labelled answers (mix and MMLU) and
    held-out no-choice pairs, all from the calibration split."""
    return [*group(cal, "labelled"), *group(cal, "mmlu"), *pairs(group(cal, "no_choices"))]


def eval_sets(rows: Sequence[Row], *, prefix: str) -> dict[str, list[Row]]:
    """Named views of one split's rows; per-source views follow each pooled set."""
    labelled = group(rows, "labelled")
    no_choices = group(rows, "no_choices")
    sets: dict[str, list[Row]] = {
        f"open_ended_{prefix}": [r for r in labelled if r["kind"] in OPEN_KINDS],
        f"mc_labelled_{prefix}": [r for r in labelled if r["kind"] == "mc"],
        f"mmlu_{prefix}": group(rows, "mmlu"),
        f"pairs_{prefix}": pairs(no_choices),
        f"no_choices_own_{prefix}": own_answers(no_choices),
    }
    for pooled in (f"open_ended_{prefix}", f"pairs_{prefix}", f"no_choices_own_{prefix}"):
        for source in sorted({str(r["source"]) for r in sets[pooled]}):
            sets[f"{pooled}/{source}"] = [r for r in sets[pooled] if r["source"] == source]
    return {k: v for k, v in sets.items() if v}


def ood_sets(rows: Sequence[Row]) -> dict[str, list[Row]]:
    ood = group(rows, "ood")
    return {"ood_copa_pairs": pairs(ood), "ood_copa_own": own_answers(ood)}


def untouched_sets(rows: Sequence[Row]) -> dict[str, list[Row]]:
    """SST-2, which no fit or selection reads: (review, right label) vs (review, wrong label)
    pairs, and the model's own label (the likelier reply)."""
    untouched = group(rows, "untouched")
    return {"untouched_sst2_pairs": pairs(untouched), "untouched_sst2_own": own_answers(untouched)}


def score_sets(
    cal: Calibrators, sets: Mapping[str, Sequence[Row]]
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    results = {}
    for name, rows in sets.items():
        y = head_fit.labels(rows)
        results[name] = {m: (p, y) for m, p in head_fit.method_confidences(cal, rows).items()}
    return results


def stratified_deltas(
    results: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    sets: Mapping[str, Sequence[Row]],
    *,
    n_boot: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Per pooled set: stratified AUROC of each method and its paired ΔAUROC vs the baseline."""
    out: dict[str, dict[str, Any]] = {}
    for name, methods in results.items():
        strata = [str(r["source"]) for r in sets[name]]
        if "/" in name or len(set(strata)) < 2:
            continue
        base = methods[BASELINE][0]
        out[name] = {
            m: {
                "stratified_auroc": stratified_auroc(p, y, strata),
                "delta_vs_baseline": None
                if m == BASELINE
                else paired_stratified_auroc_diff(p, base, y, strata, n=n_boot, seed=seed),
            }
            for m, (p, y) in methods.items()
        }
    return out


def fit(
    signals: Path, graded: Sequence[Path], *, adapter_temperature: float, train_rate: float
) -> tuple[Calibrators, list[Row]]:
    cal_rows = load_rows(signals, "calibration", graded)
    # The zero-shot temperature and the source rates see the model's own answers only,
    # like the adapter's temperature did; pairs are a constructed 50 % set.
    own = [
        *group(cal_rows, "labelled"),
        *group(cal_rows, "mmlu"),
        *own_answers(group(cal_rows, "no_choices")),
    ]
    calibrators = head_fit.fit_calibrators(
        own, adapter_temperature=adapter_temperature, train_rate=train_rate, head_rows=head_rows(cal_rows)
    )
    return calibrators, cal_rows


def _head_group(row: Row) -> str:
    """The group of a head_rows row as eval_sets names it: open-ended or MC labelled
    answers, no-choice pairs, MMLU."""
    if row.get("group") == "labelled":
        return "open_ended" if row["kind"] in OPEN_KINDS else "mc_labelled"
    return "pairs" if row.get("group") == "no_choices" else str(row.get("group"))


def head_row_groups(rows: Sequence[Row]) -> dict[str, np.ndarray]:
    """Indices into head_rows' rows of each group the report reads apart."""
    names = np.array([_head_group(r) for r in rows])
    return {n: np.flatnonzero(names == n) for n in sorted(set(names.tolist()))}


def _one(train: Sequence[Row], name: str) -> Any:
    head = head_fit.one_feature(train, name)
    return lambda held: head_fit.apply_head(head, held)


def selection_numbers(cal: Calibrators, cal_rows: Sequence[Row], ood_rows: Sequence[Row]) -> dict[str, Any]:
    """What chooses the default method: out-of-fold calibration numbers and OOD numbers."""
    from service.calibration.metrics import auroc, ece

    rows = head_rows(cal_rows)

    def fitter(train: Sequence[Row]) -> Any:
        head = head_fit.fit_head(train)
        return lambda held: head_fit.apply_head(head, held)

    # Out of fold for every fitted method, so none is judged on the rows it was fitted on.
    oof = head_fit.cross_fitted(rows, fitter)
    oof_sum = head_fit.cross_fitted(rows, lambda t: _one(t, "answer_logprob_sum"))
    oof_mean = head_fit.cross_fitted(rows, lambda t: _one(t, "answer_logprob_mean"))
    y = head_fit.labels(rows)
    scored = head_fit.method_confidences(cal, rows)
    out: dict[str, Any] = {"calibration_out_of_fold": {}, "ood": {}}
    parts = head_row_groups(rows)
    for method, p in scored.items():
        p = {"calibrated_head": oof, "likelihood_sum": oof_sum, "likelihood_mean": oof_mean}.get(method, p)
        out["calibration_out_of_fold"][method] = {
            "auroc": auroc(p, y),
            "auroc_within_sources": stratified_auroc(p, y, [head_fit.stratum(r) for r in rows]),
            "ece": ece(p, y),
            "n": len(rows),
            # Pooled ECE can hide a group the method is far off on (the target is
            # per group): each group's numbers, same out-of-fold predictions.
            "by_group": {
                name: {"auroc": auroc(p[idx], y[idx]), "ece": ece(p[idx], y[idx]), "n": int(idx.size)}
                for name, idx in parts.items()
            },
        }
    for name, rows_ in ood_sets(ood_rows).items():
        if not rows_:  # signals read without the OOD set
            continue
        yy = head_fit.labels(rows_)
        out["ood"][name] = {
            m: {"auroc": auroc(p, yy), "ece": ece(p, yy), "n": len(rows_)}
            for m, p in head_fit.method_confidences(cal, rows_).items()
        }
    return out


def report(
    cal: Calibrators,
    signals: Path,
    graded: Sequence[Path],
    out_dir: Path,
    *,
    metadata: Mapping[str, Any],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """The one read of the test split for this version, plus the OOD sets; writes the report.
    Signals read before the untouched set existed have no file for it: the report leaves it
    out, and `--untouched-only` reads it once later."""
    test_rows = load_rows(signals, "test", graded)
    sets = {**eval_sets(test_rows, prefix="test"), **ood_sets(load_rows(signals, "ood", graded))}
    if (signals / "untouched.jsonl").exists():
        sets.update(untouched_sets(load_rows(signals, "untouched", graded)))
    results = score_sets(cal, sets)
    written = write_report(results, out_dir, metadata=metadata, n_boot=n_boot, seed=seed, baseline=BASELINE)
    written["stratified"] = stratified_deltas(results, sets, n_boot=n_boot, seed=seed)
    return written


def read_untouched(signals: Path, graded: Sequence[Path]) -> dict[str, list[Row]]:
    """The untouched sets for `--untouched-only`: the one read of SST-2 for a version shipped
    before it existed (its report directory stays as its test read wrote it)."""
    path = signals / "untouched.jsonl"
    sets = untouched_sets(load_rows(signals, "untouched", graded)) if path.exists() else {}
    if not sets or not all(sets.values()):
        raise SystemExit(f"{path}: no untouched rows; read them with adapters.signals_job --sets untouched")
    return sets


def render_stratified(stratified: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: per pooled set, each method's AUROC within sources and its paired ΔAUROC."""
    from adapters.report import _fmt

    lines = ["", "# AUROC within sources (stratified)", ""]
    for name, methods in stratified.items():
        lines += [
            f"## {name}",
            "",
            f"| method | stratified AUROC | Δ vs {BASELINE} [95% CI] |",
            "|---|---|---|",
        ]
        for method, s in methods.items():
            d = s["delta_vs_baseline"]
            delta = "—" if d is None else f"{_fmt(d['estimate'])} [{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}]"
            lines.append(f"| {method} | {_fmt(s['stratified_auroc'])} | {delta} |")
        lines.append("")
    lines.append(
        "Stratified AUROC: size-weighted mean of the AUROC inside each source with both classes; "
        "the interval resamples items within each source, the same items for both methods."
    )
    return "\n".join(lines) + "\n"


def export_with_head(
    source: Path, dest: Path, *, version: str, head: HeadParams, reference: Mapping[str, Any], note: str
) -> None:
    """A new adapter version: the source version's LoRA files and manifest, plus the head.

    Raises:
        FileExistsError: `dest` exists (versions are immutable once exported).
    """
    import shutil
    from datetime import datetime, timezone

    from service.lora.manifest import AdapterManifest, ReferenceHistogram

    manifest = AdapterManifest.read(source)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("manifest.json"))
    lora_from = f"{manifest.name}/{manifest.version}"
    # The registry serves <name>/<version> only when the manifest says the same.
    manifest.name, manifest.version = dest.parent.name, version
    manifest.created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest.head = head
    manifest.head_reference_histogram = ReferenceHistogram.model_validate(reference)
    manifest.training_data = {**manifest.training_data, "lora_weights_from": lora_from, "head": note}
    # The source's held-out metrics describe the source; this version's come from its own report.
    manifest.metrics = {}
    manifest.write(dest)


def record_metrics(adapter_dir: Path, report: Mapping[str, Any]) -> None:
    """Put the report's point estimates (per eval set and method) into the manifest."""
    from service.lora.manifest import AdapterManifest

    headline = ("accuracy", "ece", "auroc", "brier")
    manifest = AdapterManifest.read(adapter_dir)
    manifest.metrics = {
        name: {m: {"n": s["n"], **{k: s[k]["value"] for k in headline}} for m, s in methods.items()}
        for name, methods in report["eval_sets"].items()
    }
    manifest.write(adapter_dir)


def format_accuracy(cal_rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
    """Accuracy of each multiple-choice answering format per source, on the calibration
    split: lettered choices in the question (what v6 trained on) vs the bare question."""
    out: dict[str, dict[str, Any]] = {}
    labelled = [r for r in group(cal_rows, "labelled") if r["kind"] == "mc"]
    own = own_answers(group(cal_rows, "no_choices"))
    for fmt, rows in (("choices", labelled), ("no_choices", own)):
        for source in sorted({str(r["source"]) for r in rows}):
            y = [float(r["correct"]) for r in rows if r["source"] == source]
            out.setdefault(source, {})[fmt] = {"accuracy": float(np.mean(y)), "n": len(y)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from service.calibration.metrics import confidence_histogram, nan_to_none
    from service.lora.manifest import AdapterManifest

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--signals", type=Path, required=True)
    parser.add_argument("--adapter", type=Path, required=True, help="adapter whose LoRA gave the signals")
    parser.add_argument("--graded", type=Path, action="append", default=[], help="graded files (base rate)")
    parser.add_argument("--out", type=Path, required=True, help="report directory")
    parser.add_argument("--select-only", action="store_true", help="fit, print selection numbers; no test")
    parser.add_argument(
        "--untouched-only",
        action="store_true",
        help="read only the untouched set (SST-2) with the version's served head; report to OUT/untouched",
    )
    parser.add_argument("--export", type=Path, default=None, help="write a new version here with the head")
    parser.add_argument(
        "--record-in", type=Path, default=None, help="adapter whose manifest gets the metrics"
    )
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = AdapterManifest.read(args.adapter)
    labelled = [p for p in args.graded if "mmlu" not in p.name]
    cal, cal_rows = fit(
        args.signals,
        args.graded,
        adapter_temperature=manifest.temperature,
        train_rate=train_base_rate(labelled),
    )
    if args.untouched_only:
        if manifest.head is not None:  # what the version serves, not a refit of it
            cal = dataclasses.replace(cal, head=manifest.head)
        metadata = {
            "signals_of": f"{manifest.name}/{manifest.version}",
            "untouched_reads": "this report is the one read of the untouched set (SST-2) for this version; "
            "no fit, temperature or selection step read it",
            "zero_shot_temperature": cal.zero_shot_temperature,
            "adapter_temperature": cal.adapter_temperature,
            "head": "the version's own (manifest)" if manifest.head is not None else cal.head.model_dump(),
        }
        results = score_sets(cal, read_untouched(args.signals, args.graded))
        write_report(results, args.out / "untouched", metadata=metadata, n_boot=args.n_boot, seed=args.seed)
        return 0
    selection = selection_numbers(cal, cal_rows, load_rows(args.signals, "ood", args.graded))
    selection["format_accuracy_calibration"] = format_accuracy(cal_rows)
    selection["zero_shot_temperature"] = cal.zero_shot_temperature
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "selection.json").write_text(json.dumps(nan_to_none(selection), indent=2) + "\n")
    (args.out / "head.json").write_text(cal.head.model_dump_json(indent=2) + "\n")
    print(json.dumps(nan_to_none(selection), indent=1))
    # The head is chosen and exported from calibration and OOD numbers only, before any test read.
    if args.export is not None:
        own = [
            *group(cal_rows, "labelled"),
            *group(cal_rows, "mmlu"),
            *own_answers(group(cal_rows, "no_choices")),
        ]
        reference = confidence_histogram(head_fit.apply_head(cal.head, own))
        note = (
            f"calibrated head fitted on the calibration split of {manifest.name}/{manifest.version}'s signals"
        )
        export_with_head(
            args.adapter, args.export, version=args.export.name, head=cal.head, reference=reference, note=note
        )
    if args.select_only:
        return 0
    metadata = {
        "signals_of": f"{manifest.name}/{manifest.version}",
        "test_split_reads": "this report is the one read of the test split for the shipped version",
        "zero_shot_temperature": cal.zero_shot_temperature,
        "adapter_temperature": cal.adapter_temperature,
        "train_base_rate": cal.train_rate,
        "head": cal.head.model_dump(),
    }
    written = report(
        cal, args.signals, args.graded, args.out, metadata=metadata, n_boot=args.n_boot, seed=args.seed
    )
    stratified = nan_to_none(written["stratified"])
    if args.record_in is not None:
        record_metrics(args.record_in, written)
    (args.out / "stratified.json").write_text(json.dumps(stratified, indent=2) + "\n")
    with (args.out / "report.md").open("a", encoding="utf-8") as handle:
        handle.write(render_stratified(stratified))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
