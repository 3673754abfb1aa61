"""Shared by the monitoring tests: a longhand calibration computation, running the
Prometheus rules with promtool on series scraped from the service's real /metrics output, and
reading the shadow reads a service stored in its SQLite outcome store."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
# What the calibration recording rules read.
CALIBRATION_INPUTS = (
    "confidence_feedback_total",
    "confidence_feedback_confidence_sum_total",
    "confidence_feedback_squared_error_total",
    "confidence_served_confidence_count",
)


def hand_calibration(pairs: Sequence[tuple[float, int]]) -> tuple[float, float, float]:
    """(ECE with 10 equal bins, the last one closed; Brier; accuracy), written out longhand."""
    bins: dict[int, tuple[int, float, int]] = {}
    for p, y in pairs:
        k = min(int(p * 10), 9)
        count, conf, correct = bins.get(k, (0, 0.0, 0))
        bins[k] = (count + 1, conf + p, correct + y)
    n = len(pairs)
    ece = sum(abs(correct - conf) for _, conf, correct in bins.values()) / n
    brier = sum((p - y) ** 2 for p, y in pairs) / n
    return ece, brier, sum(y for _, y in pairs) / n


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: scripts/setup installs it (Debian package 'prometheus')")
    return path


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, check=False)


def scraped_samples(text: str, names: Iterable[str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(metric name, sorted labels): value} of the named samples in a /metrics page."""
    wanted = set(names)
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def series_from_scrapes(
    scrapes: dict[str, Sequence[str]], *, names: Iterable[str] = CALIBRATION_INPUTS, minutes_each: int = 10
) -> tuple[list[dict[str, str]], int]:
    """promtool input series from successive /metrics pages of each replica (instance).

    Scrape k of every instance is held for `minutes_each` one-minute samples, the last one
    until the returned end minute, so a window ending there spans all of them.
    Returns (input_series, end minute).
    """
    names = tuple(names)
    n_scrapes = {len(pages) for pages in scrapes.values()}
    assert len(n_scrapes) == 1, "every instance needs the same number of scrapes"
    end = minutes_each * (n_scrapes.pop() - 1) + 50
    series = []
    for instance, pages in scrapes.items():
        parsed = [scraped_samples(page, names) for page in pages]
        for key in sorted(set().union(*parsed)):
            name, labels = key
            values = []
            for k, samples in enumerate(parsed):
                hold = minutes_each if k < len(parsed) - 1 else end - minutes_each * k + 1
                values += [repr(samples.get(key, 0.0))] * hold
            selector = ",".join(f'{k}="{v}"' for k, v in (("instance", instance), *labels))
            series.append({"series": f"{name}{{{selector}}}", "values": " ".join(values)})
    return series, end


def assert_rules_give(
    tmp_path: Path,
    series: list[dict[str, str]],
    end_minute: int,
    expected: dict[str, float],
    labels: dict[str, str],
    *,
    tolerance: float = 1e-9,
) -> None:
    """Evaluate the recording rules on `series` with promtool and check that each named rule
    equals its expected value (within `tolerance`) at `end_minute` for `labels`."""
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    tests = [
        {
            "expr": f"abs({rule}{{{selector}}} - {value!r}) < bool {tolerance}",
            "eval_time": f"{end_minute}m",
            "exp_samples": [{"labels": f"{{{selector}}}", "value": 1}],
        }
        for rule, value in expected.items()
    ]
    spec = {
        "rule_files": [str(p) for p in RULES],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": tests}],
    }
    path = tmp_path / "from_metrics_test.yml"
    path.write_text(json.dumps(spec, indent=1))  # JSON is YAML
    result = run_promtool("test", "rules", str(path))
    # On failure promtool prints what each rule evaluated to.
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


def stored_shadow_reads(db: Path, n: int, *, timeout: float = 10.0) -> list[tuple[str, str, float]]:
    """(candidate version, method, confidence) of the shadow table in item order, once at least
    `n` rows have landed (the service writes them in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        with sqlite3.connect(db) as conn:
            query = "SELECT adapter_version, method, confidence FROM confidence_shadow_outcomes"
            rows = conn.execute(f"{query} ORDER BY item_index").fetchall()
        if len(rows) >= n:
            return rows
        assert time.monotonic() < deadline, f"{len(rows)} of {n} shadow rows after {timeout} s"
        time.sleep(0.02)
