"""Held-out evaluation helpers: pairs, the model's own no-choice answers, the exported head."""

from __future__ import annotations

import pytest

from adapters import heldout_eval
from adapters.head_fit import fit_head
from service.lora.manifest import AdapterManifest
from tests.unit.conftest import write_adapter


def _choice(q: int, c: int, gold: int, logprob_sum: float) -> dict:
    return {
        "id": f"arc_easy:{q}#c{c}",
        "source": "arc_easy",
        "group": "no_choices",
        "kind": "mc",
        "correct": c == gold,
        "adapter_gap": 0.1 * c,
        "zero_shot_gap": -0.1 * c,
        "answer_logprob_sum": logprob_sum,
        "answer_logprob_mean": logprob_sum / 2,
        "answer_tokens": 2,
        "answer": f"choice {c}",
    }


ROWS = [
    _choice(1, 0, 1, -5.0),
    _choice(1, 1, 1, -2.0),
    _choice(1, 2, 1, -9.0),
    _choice(2, 0, 0, -4.0),
    _choice(2, 1, 0, -1.0),
]


def test_pairs_hold_the_gold_and_one_wrong_choice_per_question():
    pairs = heldout_eval.pairs(ROWS)
    assert len(pairs) == 4
    for i in range(0, 4, 2):
        gold, wrong = pairs[i], pairs[i + 1]
        assert gold["correct"] and not wrong["correct"]
        assert heldout_eval.question_key(gold) == heldout_eval.question_key(wrong)
    assert heldout_eval.pairs(ROWS) == pairs  # the wrong choice is drawn deterministically


def test_own_answer_is_the_most_likely_choice_text():
    own = heldout_eval.own_answers(ROWS)
    assert [(r["id"], r["correct"]) for r in own] == [("arc_easy:1#c1", True), ("arc_easy:2#c1", False)]


def test_exported_version_keeps_the_lora_files_and_carries_a_valid_head(tmp_path):
    source = write_adapter(tmp_path, "unc", "v6", temperature=1.5)
    head = fit_head([*ROWS, *ROWS])
    reference = {"bin_edges": [i / 10 for i in range(11)], "counts": [1] * 10}
    heldout_eval.export_with_head(
        source, tmp_path / "unc" / "v7", version="v7", head=head, reference=reference, note="test"
    )
    manifest = AdapterManifest.read(tmp_path / "unc" / "v7")
    assert manifest.version == "v7" and manifest.temperature == 1.5
    assert manifest.training_data["lora_weights_from"] == "unc/v6"
    assert manifest.head == head
    assert (tmp_path / "unc" / "v7" / "adapter_model.safetensors").read_bytes() == (
        source / "adapter_model.safetensors"
    ).read_bytes()


def _signal_row(source: str, group: str, q: int, c: int, gold: int, rng) -> dict:
    """A signal row whose likelihood leans towards the right answer, so every fit has a signal."""
    correct = c == gold
    logprob = float(rng.normal(-3.0 if correct else -4.0, 1.0))
    return {
        "id": f"{source}:{q}#c{c}",
        "source": source,
        "group": group,
        "kind": "mc",
        "correct": correct,
        "adapter_gap": float(rng.normal(0.3 if correct else 0.0, 1.0)),
        "zero_shot_gap": float(rng.normal(0.0, 1.0)),
        "answer_logprob_sum": logprob,
        "answer_logprob_mean": logprob / 2,
        "answer_tokens": 2,
        "answer": f"choice {c}",
    }


def _signals(tmp_path):
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    signals = tmp_path / "signals"
    signals.mkdir()
    calibration = [
        _signal_row(source, "no_choices", q, c, q % 3, rng)
        for source in ("arc_easy", "sciq")
        for q in range(60)
        for c in range(3)
    ]
    untouched = [_signal_row("sst2", "untouched", q, c, q % 2, rng) for q in range(80) for c in range(2)]
    for name, rows in (("calibration", calibration), ("untouched", untouched)):
        (signals / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    graded = tmp_path / "train_mix.jsonl"
    graded.write_text(
        "".join(
            json.dumps({"id": f"t{i}", "source": "triviaqa", "kind": "open", "split": "train",
                        "question": f"question {i}?", "answer": "yes" if i % 4 else "Paris",
                        "correct": i % 4 == 0, "meta": {"gold": ["Paris"]}}) + "\n"
            for i in range(20)
        )
    )  # fmt: skip
    return signals, graded


def test_untouched_only_reads_the_untouched_set_with_the_served_head_and_nothing_else(tmp_path):
    """The one read of SST-2 for a shipped version: its own report, the version's head as
    served, no test split read (there is none here) and no selection written."""
    import json

    import pytest

    signals, graded = _signals(tmp_path)
    served_head = fit_head([*ROWS, *ROWS])
    adapter = write_adapter(tmp_path / "adapters", "unc", "v7", temperature=1.5, head=served_head)
    out = tmp_path / "report"
    args = ["--signals", str(signals), "--adapter", str(adapter), "--graded", str(graded), "--out", str(out)]
    assert heldout_eval.main([*args, "--untouched-only", "--n-boot", "50"]) == 0
    report = json.loads((out / "untouched" / "report.json").read_text())
    assert set(report["eval_sets"]) == {"untouched_sst2_pairs", "untouched_sst2_own"}
    assert report["eval_sets"]["untouched_sst2_pairs"]["calibrated_head"]["n"] == 160
    assert report["eval_sets"]["untouched_sst2_own"]["calibrated_head"]["n"] == 80
    assert report["metadata"]["head"] == "the version's own (manifest)"
    # Scored with the served head, not one refitted on the calibration rows.
    from adapters.features import read_rows
    from adapters.head_fit import apply_head, labels
    from adapters.heldout_eval import untouched_sets
    from service.calibration.metrics import auroc

    pairs = untouched_sets(read_rows(signals / "untouched.jsonl"))["untouched_sst2_pairs"]
    served = auroc(apply_head(served_head, pairs), labels(pairs))
    refit = auroc(apply_head(fit_head(read_rows(signals / "calibration.jsonl")), pairs), labels(pairs))
    assert served != pytest.approx(refit)
    assert report["eval_sets"]["untouched_sst2_pairs"]["calibrated_head"]["auroc"]["value"] == pytest.approx(
        served
    )
    assert not (out / "selection.json").exists() and not (out / "report.json").exists()


def test_untouched_only_without_untouched_signals_says_how_to_read_them(tmp_path):
    import pytest

    signals, graded = _signals(tmp_path)
    (signals / "untouched.jsonl").unlink()
    adapter = write_adapter(tmp_path / "adapters", "unc", "v7", temperature=1.5)
    args = ["--signals", str(signals), "--adapter", str(adapter), "--graded", str(graded)]
    with pytest.raises(SystemExit, match="signals_job --sets untouched"):
        heldout_eval.main([*args, "--out", str(tmp_path / "r"), "--untouched-only"])


def test_a_head_version_exported_under_another_name_is_served_under_that_name(tmp_path):
    """An experiment's LoRA (its own name) becomes a version of the served adapter name: the
    manifest must say <name>/<version> of its new directory or the registry refuses it."""
    source = write_adapter(tmp_path / "experiments", "kvshared", "v1", temperature=1.2)
    reference = {"bin_edges": [i / 10 for i in range(11)], "counts": [1] * 10}
    dest = tmp_path / "exported" / "unc" / "v8"
    dest.parent.mkdir(parents=True)
    heldout_eval.export_with_head(
        source, dest, version="v8", head=fit_head([*ROWS, *ROWS]), reference=reference, note="test"
    )
    manifest = AdapterManifest.read(dest)
    assert (manifest.name, manifest.version) == (dest.parent.name, dest.name) == ("unc", "v8")
    assert manifest.training_data["lora_weights_from"] == "kvshared/v1"


def test_selection_reads_each_group_apart_from_the_pooled_numbers(tmp_path):
    """A group the head is far off on must show in selection.json, not vanish in the pool:
    by_group holds each group's out-of-fold AUROC and ECE, over the same rows as the pool."""
    import json

    import numpy as np

    from service.calibration.metrics import ece

    signals, graded = _signals(tmp_path)
    rng = np.random.default_rng(1)
    open_rows = [
        {**_signal_row("triviaqa", "labelled", q, 0, 0 if q % 10 == 0 else 1, rng), "kind": "open"}
        for q in range(120)
    ]
    with (signals / "calibration.jsonl").open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in open_rows))
    cal, cal_rows = heldout_eval.fit(signals, [graded], adapter_temperature=1.0, train_rate=0.2)
    numbers = heldout_eval.selection_numbers(cal, cal_rows, [])["calibration_out_of_fold"]
    for method, pooled in numbers.items():
        groups = pooled["by_group"]
        assert set(groups) == {"open_ended", "pairs"}, method
        assert groups["open_ended"]["n"] == 120 and sum(g["n"] for g in groups.values()) == pooled["n"]
    # the constant's ECE per group is |its rate - the group's accuracy|
    constant = numbers["constant"]["by_group"]["open_ended"]["ece"]
    assert constant == pytest.approx(ece(np.full(120, 0.2), [r["correct"] for r in open_rows]))
