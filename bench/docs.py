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


OVERHEAD_ARMS = {
    "plain": "plain generation",
    "confidence": "method adapter (LoRA + Prompt)",
    "second": "method adapter through --second-adapter",
    "head": "method calibrated_head",
    "zero_shot": "method zero_shot (base model read)",
    "cached": "adapter, answer_with_adapter",
}


def overhead(r: dict[str, Any]) -> list[str]:
    rows = []
    for clients, s in r["clients"].items():
        plain = s["plain"]
        for arm, label in OVERHEAD_ARMS.items():
            if arm not in s:
                continue
            a = s[arm]
            hits = a.get("prefix_cache_hit_rate", {})
            if arm == "second":
                label = f"method adapter through {r['second_adapter']}"
            elif r.get("second_adapter") and arm in ("confidence", "head"):
                label = f"{label}, {r['default_adapter']}"  # which of the two adapters
            rows.append(
                [
                    clients,
                    label,
                    a["mean_s"],
                    a["p50_s"],
                    a["mean_s"] / plain["mean_s"],
                    a["throughput_rps"],
                    plain["throughput_rps"] / a["throughput_rps"],
                    ", ".join(f"{k} {v:.0%}" for k, v in sorted(hits.items())) or None,
                ]
            )
    cols = [
        "clients",
        "arm",
        "mean s",
        "p50 s",
        "latency ratio",
        "req/s",
        "throughput ratio",
        "prefix cache hits",
    ]
    return md(cols, rows)


def vs_sampling(r: dict[str, Any]) -> list[str]:
    rows = [[name, m["ms_per_item"], m["auroc"], m["ece"], m["brier"]] for name, m in r["methods"].items()]
    note = f"{r['items']} held-out items; self-consistency costs **{r['cost_ratio']:.1f}x** LoRA + Prompt."
    return [*md(["method", "ms/item", "AUROC", "ECE", "Brier"], rows), "", note]


def score_throughput(r: dict[str, Any]) -> list[str]:
    naive = r["naive_transformers_peft"]["items_per_s"]
    rows = [
        [
            p["clients"],
            p["batch"],
            p["items_per_s"],
            p["items_per_s"] / naive,
            p["p99_s"],
            p.get("compute", {}).get("fraction_of_peak"),
            p.get("compute", {}).get("fraction_of_model_shape_peak"),
        ]
        for p in r["server"].values()
    ]
    rows.append(["naive transformers+peft loop", 1, naive, 1.0, None, None, None])
    columns = [
        *("clients", "items/request", "items/s", "x naive", "p99 s"),
        *("of peak FLOP/s", "of model-shape peak"),
    ]
    lines = md(columns, rows)
    if "peak" in r:
        dtypes = ", ".join(f"{d} {p['flops'] / 1e9:.0f} GFLOP/s" for d, p in r["peak"]["dtypes"].items())
        model = r["peak"].get("model_shapes")
        shapes = (
            f"; the model's own layer shapes on {model['tokens']} tokens ({model['dtype']}) "
            f"{model['flops'] / 1e9:.0f} GFLOP/s"
            if model
            else ""
        )
        lines += [
            "",
            f"Peak (matmul, same run): {dtypes}{shapes}; {r['query_tokens_per_item']:.0f} query tokens "
            f"per item, {r['non_embedding_parameters'] / 1e6:.0f} M non-embedding parameters.",
        ]
    return lines


def overhead_profile(r: dict[str, Any]) -> list[str]:
    total = r["mean_s"]["service"]
    rows = [[part, v, v / total] for part, v in r["breakdown_s"].items()]
    rows.append(["total (service)", total, 1.0])
    steps = ", ".join(f"{k} {v:.2f} s" for k, v in r["mean_s"].items())
    t = r["tokens_per_request"]
    note = (
        f"One wave of {r['clients']} requests, {r['max_tokens']} new tokens, "
        f"mean of {len(r['rounds'])} rounds "
        f"({steps}). Tokens per request: prompt {t['prompt']:.0f}, answer {t['answer']:.0f}, "
        f"confidence query {t['query']:.0f}. Service {r['service_ratio']:.2f}x plain; answers plus the "
        f"confidence prefills run alone, one after the other: {r['limit_ratio']:.2f}x."
    )
    return [*md(["part", "seconds", "share"], rows), "", note]


def roofline(r: dict[str, Any]) -> list[str]:
    rows = [[d, p["n"], p["flops"] / 1e9] for d, p in r["dtypes"].items()]
    if "model_shapes" in r:
        m = r["model_shapes"]
        rows.append([f"{m['dtype']}: the model's layer, {m['tokens']} tokens", "–", m["flops"] / 1e9])
    note = f"{r['threads']} threads on {r['device']}; the engine runs {r['engine_dtype']}."
    return [*md(["dtype", "matrix n", "GFLOP/s"], rows), "", note]


def scaling(r: dict[str, Any]) -> list[str]:
    from bench import scaling as bench_scaling

    table = md(bench_scaling.COLUMNS, bench_scaling.rows(r))
    # The plot path is relative to the repository; this page lives in docs/.
    plot = r["plot"].removeprefix("docs/") if r["plot"].startswith("docs/") else f"../{r['plot']}"
    return [*table, "", f"Confidence method: `{r['method']}`.", "", f"![scaling]({plot})"]


def prefill_budget(r: dict[str, Any]) -> list[str]:
    from bench import prefill_budget as bench_budget

    return md(bench_budget.COLUMNS, bench_budget.rows(r))


def cpu_threads(r: dict[str, Any]) -> list[str]:
    rows = [
        [
            name,
            x["score_items_per_s"],
            x["single_item_idle"]["p50_s"],
            x["single_item_idle"]["p99_s"],
            x["health_under_load"]["p50_s"],
            x["health_under_load"]["p99_s"],
        ]
        for name, x in r["settings"].items()
    ]
    cols = ["setting", "/score items/s (8 clients x 16)", "1-item p50 s", "1-item p99 s"]
    return md([*cols, "/health p50 s (loaded)", "/health p99 s (loaded)"], rows)


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
    "roofline": ("Machine peak (matmul roofline)", roofline),
    "cpu_threads": ("CPU thread binding", cpu_threads),
    "overhead": ("Confidence overhead (goal ≤ 1.15)", overhead),
    "overhead_v8_vs_v7": ("Confidence overhead, v8 and v7 side by side in one run", overhead),
    "overhead_v7_here": ("Confidence overhead, v7 alone (with the next table)", overhead),
    "overhead_kv_shared": ("Confidence overhead, KV-sharing LoRA alone (v8's, before its head)", overhead),
    "overhead_profile": ("Where the overhead goes at 16 clients", overhead_profile),
    "overhead_profile_v8": ("Where the overhead goes at 16 clients, v8 (KV-sharing LoRA)", overhead_profile),
    "scaling": ("Growth with concurrency and answer length", scaling),
    "prefill_budget": ("Engine step budget (chunked prefill) vs the overhead", prefill_budget),
    "vs_sampling": ("Versus sampling self-consistency", vs_sampling),
    "score_throughput": ("/score throughput (goal ≥ 4x at 32 clients)", score_throughput),
    "score_throughput_v9_32x16": (
        "/score throughput through v9's last-layer LoRA, the goal point (32 clients × 16 items)",
        score_throughput,
    ),
    "quality": ("Held-out quality", quality),
    "hot_swap": ("Hot swap", hot_swap),
    "lora_cost": ("CPU LoRA cost (target ≤ 1.3x at batch 16)", lora_cost),
    "load_test": ("Load test", load_test),
    "openai_vs_vllm": ("/v1/chat/completions with confidence vs vLLM's OpenAI server", openai_vs_vllm),
}


# The headline figure of each benchmark that `bench/run_all --repeats` runs again, to show
# how much a figure moves between runs on the same machine.
KEY_FIGURES: dict[str, tuple[str, Callable[[dict[str, Any]], float]]] = {
    "roofline": ("bfloat16 matmul GFLOP/s", lambda r: r["dtypes"]["bfloat16"]["flops"] / 1e9),
    "lora_cost": (
        "LoRA/base prefill, batch 16",
        lambda r: r["arms"]["patched"]["batch"]["16"]["lora_over_base"],
    ),
    "overhead": ("latency ratio, 16 clients", lambda r: r["clients"]["16"]["latency_ratio"]),
    "hot_swap": ("p99 s during the swap", lambda r: r["during_swap"]["p99_s"]),
}


def spread(results_dir: Path) -> list[str]:
    """Min/max of each key figure over the main run and its repeats (results_dir/repeats/)."""
    rows = []
    for name, (label, figure) in KEY_FIGURES.items():
        runs = [results_dir / f"{name}.json", *sorted((results_dir / "repeats").glob(f"{name}-*.json"))]
        values = [figure(json.loads(p.read_text())) for p in runs if p.is_file()]
        if len(values) > 1:
            rows.append(
                [name, label, len(values), min(values), max(values), " / ".join(f"{v:.3g}" for v in values)]
            )
    if not rows:
        return []
    return [
        "### Run-to-run spread",
        "",
        *md(["benchmark", "figure", "runs", "min", "max", "each run"], rows),
        "",
        "The repeats (`REPEATS=2 bench/run_all`) run the same command again after the full run;"
        " the overhead repeats at 16 clients only, 32 requests per arm.",
        "",
    ]


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
        load = m.get("load_average")
        at_load = f", load average {load[0]:.2f} at the end" if load else ""
        lines += ["", f"_{r['finished_at']} on {where} ({versions}{at_load}); `{r['command']}`{quick}_", ""]
    lines += spread(results_dir)
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
