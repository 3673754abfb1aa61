"""Every benchmark script in --quick mode on the tiny model, plus the short load test.

The scripts' own code runs (argument parsing, the measurement, the table, the JSON
record); only the engine is shared, started once for the module, so the whole smoke run
costs one engine start instead of one per script. `bench/run_all` runs them at full
size, each with its own engine.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from bench import (
    cpu_threads,
    hot_swap,
    load_test,
    lora_cost,
    openai_vs_vllm,
    overhead,
    overhead_profile,
    prefill_budget,
    quality,
    roofline,
    scaling,
    score_throughput,
    vs_sampling,
)
from bench.common import DEFAULT_ADAPTER, http_server, publish, settings_for
from tests.integration.conftest import make_random_lora, started_engine, write_manifest

pytestmark = pytest.mark.integration
in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the loop bench_engine lives in


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bench_engine(tiny_model: Path) -> AsyncIterator[object]:
    async with started_engine(tiny_model, max_loras=2) as engine:
        yield engine


def quick_args(module, tiny_model: Path, adapter_root: Path, out: Path, *extra: str):
    return module.parse(
        ["--quick", "--model", str(tiny_model), "--adapter", str(adapter_root / "alpha" / "v1"),
         "--max-model-len", "512", "--kv-cache-gib", "0.25", "--out", str(out), *extra]
    )  # fmt: skip


def newer_version(tiny_model: Path, adapter_root: Path, tmp_path: Path) -> Path:
    """alpha@v2, in a root of its own: a newer version of the default adapter's name."""
    path = make_random_lora(tiny_model, tmp_path / "second" / "alpha" / "v2", seed=3)
    write_manifest(path, tiny_model, "alpha", "v2", temperature=1.5)
    return path


def record(path: Path) -> dict:
    data = json.loads(path.read_text())
    assert data["quick"] is True
    assert data["machine"]["cores"] >= 1 and data["machine"]["versions"]["vllm"]
    return data


@in_module_loop
@pytest.mark.parametrize(
    "module",
    [overhead, overhead_profile, vs_sampling, score_throughput, hot_swap, scaling],
    ids=lambda m: m.NAME,
)
async def test_bench_script_quick(module, bench_engine, tiny_model, adapter_root, tmp_path):
    extra = {
        scaling: ["--plot", str(tmp_path / "scaling.png")],
        overhead: ["--second-adapter", str(newer_version(tiny_model, adapter_root, tmp_path))],
    }.get(module, [])
    args = quick_args(module, tiny_model, adapter_root, tmp_path / "out.json", *extra)
    result = await module.measure(args, bench_engine)
    data = record(publish(module.NAME, args, result, module.report))
    checks = {
        "overhead": lambda d: (
            # The newer version of the default's name is the second arm, the default stays.
            (d["default_adapter"], d["second_adapter"]) == ("alpha@v1", "alpha@v2")
            and all(
                r["latency_ratio"] > 0
                and r["cached_latency_ratio"] > 0
                and r["second_latency_ratio"] > 0
                and r["second"]["requests"] == r["confidence"]["requests"] > 0
                for r in d["clients"].values()
            )
        ),
        "overhead_profile": lambda d: (
            len(d["rounds"]) == 1 and all(v > 0 for v in d["mean_s"].values()) and d["service_ratio"] > 0
        ),
        "vs_sampling": lambda d: d["cost_ratio"] > 0 and d["items"] == 6,
        "score_throughput": lambda d: (
            d["ratio_at_top_clients"] > 0
            and d["naive_transformers_peft"]["items"] == 8
            and d["best_fraction_of_peak_at_top_clients"] > 0
        ),
        "scaling": lambda d: (
            len(d["points"]) == 4
            and all(p["latency_ratio"] > 0 for p in d["points"].values())
            and (tmp_path / "scaling.png").stat().st_size > 0
        ),
        "hot_swap": lambda d: d["failed_requests"] == 0 and d["during_swap"]["requests"] >= 0,
    }
    assert checks[module.NAME](data), data


@in_module_loop
async def test_lora_cost_quick_in_process_arm(bench_engine, tiny_model, adapter_root, tmp_path, monkeypatch):
    args = quick_args(lora_cost, tiny_model, adapter_root, tmp_path / "out.json")
    arm = await lora_cost.measure_arm(args, bench_engine)
    data = record(publish(lora_cost.NAME, args, lora_cost.combine({"patched": arm}, args), lora_cost.report))
    assert data["arms"]["patched"]["batch"]["4"]["lora_over_base"] > 0
    assert arm["patch_applies"] == arm["plugin_enabled"]  # CPU build of vllm 0.32: the patch applies
    # The unpatched arm's process gets every general plugin but ours.
    unpatched = lora_cost.arm_env("unpatched")["VLLM_PLUGINS"].split(",")
    assert lora_cost.PLUGIN not in unpatched
    monkeypatch.setenv("VLLM_PLUGINS", ",".join(unpatched))
    assert not lora_cost.plugin_enabled()


def test_cpu_threads_compares_both_bindings(tiny_model, adapter_root, tmp_path):
    """Each setting starts its own engine (the binding is read when vLLM spawns its worker)."""
    args = quick_args(cpu_threads, tiny_model, adapter_root, tmp_path / "out.json")
    data = record(publish(cpu_threads.NAME, args, asyncio.run(cpu_threads.measure(args)), cpu_threads.report))
    assert set(data["settings"]) == {"vllm_auto", "all_cores"}
    for setting in data["settings"].values():
        assert setting["score_items_per_s"] > 0 and setting["health_under_load"]["probes"] > 0


def test_prefill_budget_runs_each_budget_on_its_own_engine(tiny_model, adapter_root, tmp_path):
    """Each budget starts an engine with it (vLLM reads it at start-up); the script checks
    that vLLM resolved the budget it asked for."""
    args = quick_args(prefill_budget, tiny_model, adapter_root, tmp_path / "out.json")
    result = asyncio.run(prefill_budget.measure(args))
    data = record(publish(prefill_budget.NAME, args, result, prefill_budget.report))
    assert set(data["budgets"]) == {"128", "2048"}
    for by_clients in data["budgets"].values():
        assert by_clients["2"]["latency_ratio"] > 0 and by_clients["2"]["plain"]["requests"] == 4


def test_roofline_measures_a_positive_peak_per_dtype(tmp_path):
    assert roofline.main(["--quick", "--out", str(tmp_path / "r.json")]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    assert {d["dtype"] for d in data["dtypes"].values()} == {"float32", "bfloat16"}
    assert all(d["flops"] > 0 for d in data["dtypes"].values())
    # The model-shape ceiling times one Llama layer's seven projections (q, k, v, o, gate, up,
    # down), not its norms, and counts 2 FLOPs per weight per activation row.
    shapes = data["model_shapes"]
    assert len(shapes["shapes"]) == 7 and all(len(s) == 2 for s in shapes["shapes"])
    flop_count = 2 * shapes["tokens"] * sum(o * i for o, i in shapes["shapes"])
    assert abs(shapes["flops"] * shapes["seconds"] - flop_count) < 1e-6 * flop_count


def test_quality_prints_the_shipped_report(tmp_path):
    report = quality.report_path(DEFAULT_ADAPTER)
    assert quality.main(["--quick", "--report", str(report), "--out", str(tmp_path / "q.json")]) == 0
    rows = json.loads((tmp_path / "q.json").read_text())["rows"]
    shipped = json.loads(report.read_text())["eval_sets"]
    expected = {f"{name}/{method}" for name in quality.SETS for method in shipped.get(name, {})}
    assert "mmlu_test/lora_prompt" in expected and expected == set(rows)


@in_module_loop
async def test_load_200_clients_10_s_no_5xx_no_hangs(bench_engine, tiny_model, adapter_root, tmp_path):
    """The short load test on the real server (the 60 s run is `python -m bench.load_test`)."""
    args = quick_args(load_test, tiny_model, adapter_root, tmp_path / "load.json")
    settings = settings_for(args, max_inflight_sequences=256)
    async with http_server(settings, bench_engine) as url:
        result = await load_test.run_load(url, clients=200, duration_s=10, client_timeout_s=60, max_tokens=4)
    publish(load_test.NAME, args, result, load_test.report)
    assert result["five_xx"] == 0 and result["hangs"] == 0 and result["errors"] == {}, result
    assert result["statuses"].get("200", 0) > 0


@in_module_loop
async def test_openai_vs_vllm_quick(bench_engine, tiny_model, adapter_root, tmp_path):
    """Both arms answer the same chat requests; only ours carries confidences."""
    args = quick_args(openai_vs_vllm, tiny_model, adapter_root, tmp_path / "out.json")
    data = record(
        publish(
            openai_vs_vllm.NAME, args, await openai_vs_vllm.measure(args, bench_engine), openai_vs_vllm.report
        )
    )
    assert set(data["ratios"]) == {"1", "2"}
    assert all(r["latency_p50_ratio"] > 0 and r["throughput_ratio"] > 0 for r in data["ratios"].values())
    total = sum(row["requests"] for row in data["confidence"]["clients"].values())
    assert data["confidence"]["confidences_returned"] >= total
    assert data["vllm"]["confidences_returned"] == 0
