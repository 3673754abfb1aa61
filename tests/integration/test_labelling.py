"""Labelling through real vLLM on the tiny random model: the multiple-choice pick must
agree with a likelihood computed independently by transformers, and the records must be
the exact strings the confidence query is rendered with."""

from __future__ import annotations

import json

import pytest

from adapters import labelling
from adapters.data import QAItem, read_graded_jsonl
from service.calibration.query import encode_rendered, render

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

MC_ITEMS = [
    QAItem(id=f"arc_easy:t{i}", source="arc_easy", kind="mc", question=q, choices=c, gold=g)
    for i, (q, c, g) in enumerate(
        [
            ("Which is a planet?\nA. Moon\nB. Mars\nC. the Sun", ["Moon", "Mars", "the Sun"], 1),
            ("Water boils at?\nA. 100 C\nB. 10 C", ["100 C", "10 C"], 0),
            ("Pick a colour.\nA. red\nB. a very long green", ["red", "a very long green"], 0),
        ]
    )
]
OPEN_ITEMS = [
    QAItem(
        id="triviaqa:t1", source="triviaqa", kind="open", question="Capital of France?", aliases=["Paris"]
    ),
    QAItem(
        id="arithmetic:t1", source="arithmetic", kind="numeric", question="Calculate 2 + 2 =", aliases=["4"]
    ),
]


def transformers_choice(model_dir, item: QAItem) -> int:
    """The highest mean-log-probability choice, computed without vLLM."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt = encode_rendered(tok, render(tok, [{"role": "user", "content": item.question}]))
    scores = []
    for choice in item.choices or []:
        cont = tok.encode(choice, add_special_tokens=False)
        ids = torch.tensor([prompt + cont])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
        picked = logprobs[torch.arange(len(prompt) - 1, ids.shape[1] - 1), torch.tensor(cont)]
        scores.append(float(picked.mean()))
    return max(range(len(scores)), key=scores.__getitem__)


async def test_labelling_with_vllm_matches_transformers_and_resumes(engine, tiny_model, tmp_path):
    out = tmp_path / "graded.jsonl"
    await labelling.label_items(engine, [*MC_ITEMS, *OPEN_ITEMS], out, chunk_size=4)
    records = {r.id: r for r in read_graded_jsonl(out)}
    assert set(records) == {it.id for it in [*MC_ITEMS, *OPEN_ITEMS]}
    for item in MC_ITEMS:
        record = records[item.id]
        expected = transformers_choice(tiny_model, item)
        assert record.meta["choice"] == expected, item.id
        assert record.answer == f"{'ABC'[expected]}. {item.choices[expected]}"
        assert record.correct is (expected == item.gold)
        assert record.question == item.question
    for item in OPEN_ITEMS:
        assert records[item.id].question == item.question
        assert "\n" not in records[item.id].answer
    before = out.read_text()
    await labelling.label_items(engine, [*MC_ITEMS, *OPEN_ITEMS], out)
    assert out.read_text() == before  # nothing relabelled
    summary = json.loads(labelling.summary_path(out).read_text())
    assert summary["total"]["count"] == len(MC_ITEMS) + len(OPEN_ITEMS)
