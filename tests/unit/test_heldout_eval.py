"""Held-out evaluation helpers: pairs, the model's own no-choice answers, the exported head."""

from __future__ import annotations

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
    assert manifest.head == head
    assert (tmp_path / "unc" / "v7" / "adapter_model.safetensors").read_bytes() == (
        source / "adapter_model.safetensors"
    ).read_bytes()
