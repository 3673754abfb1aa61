"""Regenerate the results tables of docs/benchmarks.md from bench/results/*.json.

Everything between the `<!-- results:begin -->` and `<!-- results:end -->` markers is
replaced; the rest of the page (what each benchmark measures, the commands) is kept.
Also prints the tables. `bench/run_all` calls this after the benchmarks.

    python -m bench.docs [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import REPO, RESULTS_DIR

DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def md(columns: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        return "–" if v is None else str(v)

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def overhead(r: dict[str, Any]) -> list[str]:
    rows = []
    for clients, s in r["clients"].items():
        plain, conf = s["plain"], s["confidence"]
        rows.append([clients, plain["mean_s"], conf["mean_s"], s["latency_ratio"]])
        rows[-1] += [plain["throughput_rps"], conf["throughput_rps"], s["throughput_ratio"]]
    cols = [
        "clients",
        "plain mean s",
        "confidence mean s",
        "latency ratio",
        "plain req/s",
        "conf. req/s",
        "ratio",
    ]
    return md(cols, rows)


def vs_sampling(r: dict[str, Any]) -> list[str]:
    rows = [[name, m["ms_per_item"], m["auroc"], m["ece"], m["brier"]] for name, m in r["methods"].items()]
    note = f"{r['items']} held-out items; self-consistency costs **{r['cost_ratio']:.1f}x** LoRA + Prompt."
    return [*md(["method", "ms/item", "AUROC", "ECE", "Brier"], rows), "", note]


def score_throughput(r: dict[str, Any]) -> list[str]:
    naive = r["naive_transformers_peft"]["items_per_s"]
    rows = [
        [p["clients"], p["batch"], p["items_per_s"], p["items_per_s"] / naive, p["p99_s"]]
        for p in r["server"].values()
    ]
    rows.append(["naive transformers+peft loop", 1, naive, 1.0, None])
    return md(["clients", "items/request", "items/s", "x naive", "p99 s"], rows)


def quality(r: dict[str, Any]) -> list[str]:
    rows = [
        [x["set"], x["method"], x["accuracy"], x["ece"], x["auroc"], x["brier"]] for x in r["rows"].values()
    ]
    return [*md(["set", "method", "accuracy", "ECE", "AUROC", "Brier"], rows), "", f"From `{r['report']}`."]


def hot_swap(r: dict[str, Any]) -> list[str]:
    rows = [[w, r[w]["requests"], r[w]["p50_s"], r[w]["p99_s"]] for w in ("steady_state", "during_swap")]
    admin = ", ".join(f"{k} {v:.2f} s" for k, v in r["admin_call_s"].items())
    note = f"{r['clients']} clients; failed requests: {r['failed_requests']}; admin calls: {admin}."
    return [*md(["window", "requests", "p50 s", "p99 s"], rows), "", note]


def lora_cost(r: dict[str, Any]) -> list[str]:
    rows = [
        [
            arm,
            size,
            b["base_ms_per_request"],
            b["lora_ms_per_request"],
            b["lora_over_base"],
            a["patch_applies"],
        ]
        for arm, a in r["arms"].items()
        for size, b in a["batch"].items()
    ]
    return md(["arm", "batch", "base ms/req", "LoRA ms/req", "LoRA/base", "patch active"], rows)


def load_test(r: dict[str, Any]) -> list[str]:
    from bench.load_test import COLUMNS

    rows = [[json.dumps(r[k]) if k == "statuses" else r[k] for k in COLUMNS]]
    return md(list(COLUMNS.values()), rows)


def openai_vs_vllm(r: dict[str, Any]) -> list[str]:
    rows = []
    for clients, ratio in r["ratios"].items():
        mine, theirs = r["confidence"]["clients"][clients], r["vllm"]["clients"][clients]
        rows.append([clients, theirs["p50_s"], mine["p50_s"], ratio["latency_p50_ratio"]])
        rows[-1] += [theirs["throughput_rps"], mine["throughput_rps"], ratio["throughput_ratio"]]
    cols = ["clients", "vLLM p50 s", "ours p50 s", "latency ratio", "vLLM req/s", "ours req/s", "ratio"]
    return md(cols, rows)


SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], list[str]]]] = {
    "overhead": ("Confidence overhead (goal ≤ 1.15)", overhead),
    "vs_sampling": ("Versus sampling self-consistency", vs_sampling),
    "score_throughput": ("/score throughput (goal ≥ 4x at 32 clients)", score_throughput),
    "quality": ("Held-out quality", quality),
    "hot_swap": ("Hot swap", hot_swap),
    "lora_cost": ("CPU LoRA cost (target ≤ 1.3x at batch 16)", lora_cost),
    "load_test": ("Load test", load_test),
    "openai_vs_vllm": ("/v1/chat/completions with confidence vs vLLM's OpenAI server", openai_vs_vllm),
}


def render(results_dir: Path = RESULTS_DIR) -> str:
    lines = [BEGIN, ""]
    for name, (title, fmt) in SECTIONS.items():
        path = results_dir / f"{name}.json"
        lines.append(f"### {title}")
        lines.append("")
        if not path.is_file():
            lines += [f"_not measured yet: run `bench/run_all` (or `python -m bench.{name}`)_", ""]
            continue
        r = json.loads(path.read_text())
        m = r["machine"]
        where = m["gpu"] or f"{m['cpu']}, {m['cores']} cores"
        versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        quick = " — **quick smoke run, not a result**" if r.get("quick") else ""
        lines += fmt(r)
        lines += ["", f"_{r['finished_at']} on {where} ({versions}); `{r['command']}`{quick}_", ""]
    lines.append(END)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results", type=Path, default=RESULTS_DIR)
    p.add_argument("--doc", type=Path, default=DOC)
    args = p.parse_args(argv)
    text = args.doc.read_text()
    if BEGIN not in text or END not in text:
        print(f"{args.doc}: no {BEGIN} … {END} markers", file=sys.stderr)
        return 1
    block = render(args.results)
    head, rest = text.split(BEGIN, 1)
    args.doc.write_text(head + block + rest.split(END, 1)[1])
    print(block)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
