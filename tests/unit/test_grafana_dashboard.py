"""The provisioned Grafana dashboard: it parses, every PromQL expression is valid (promtool
parses it), and every metric it reads is one the service exports or a recording rule."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from service.monitoring.prometheus import ServiceMetrics
from tests.monitoring_helpers import RULES, run_promtool

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
# Grafana's variables, replaced by a value of each as Grafana would.
VARIABLES = {"$__rate_interval": "5m", "$adapter": "some-adapter", "$method": "calibrated_head"}
WINDOWS = ("1h", "1d")
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported_names() -> set[str]:
    names = set()
    for family in ServiceMetrics().registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def recorded_names() -> set[str]:
    return {rule["record"] for path in RULES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "record" in rule}  # fmt: skip


def expressions(node: object) -> list[str]:
    """Every PromQL string in a dashboard: panel targets and query variables."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(expressions(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(expressions(value))
    return found


def metric_names(expr: str) -> set[str]:
    """Identifiers of an expression that name series: not functions, keywords, labels,
    label values or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings (label values)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"\[[^\]]*\]", "", text)  # range durations
    return {
        name
        for name, call in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\()?", text)
        if not call and name not in KEYWORDS and not re.fullmatch(r"[0-9.eE+-]+", name)
    }


def concrete(expr: str, window: str) -> str:
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    expr = expr.replace("$window", window)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return re.sub(r"^label_values\((\w+),\s*\w+\)$", r"\1", expr)  # a variable query: its metric


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_reads_only_metrics_that_exist(path, tmp_path):
    dashboard = json.loads(path.read_text())
    exprs = expressions(dashboard)
    assert len(exprs) >= 10
    known = exported_names() | recorded_names()
    concrete_exprs = sorted({concrete(e, w) for e in exprs for w in WINDOWS})
    for expr in concrete_exprs:
        unknown = metric_names(expr) - known
        assert not unknown, f"{path.name}: {expr!r} reads {sorted(unknown)}, which nothing exports or records"
    # promtool parses each expression as a recording rule of a throwaway file.
    rules = [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(concrete_exprs)]
    check = tmp_path / "dashboard_exprs.yml"
    check.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(check))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_covers_the_calibration_views():
    text = " ".join(expressions(json.loads((GRAFANA / "dashboards" / "confidence.json").read_text())))
    needed = [
        "confidence_ece",
        "confidence_brier",
        "confidence_psi",
        "bin:confidence_accuracy",
        "confidence_served_confidence_bucket",
        "confidence_request_duration_seconds_bucket",
        "confidence_abstain_ratio",  # decisions, recalibration and shadows
        "confidence_decisions_total",
        "confidence_recalibrations",
        "confidence_recalibration_heldout_ece",
        "confidence_shadow_reads_total",
    ]
    assert [n for n in needed if n not in text] == []


def test_metric_name_extraction_sees_through_promql_syntax():
    expr = 'sum by (le) (rate(foo_bucket{a="x:y", b=~"q"}[5m])) / on (a) group_left (b) bar:baz:1h > bool 0.5'
    assert metric_names(expr) == {"foo_bucket", "bar:baz:1h"}


def test_provisioning_points_at_the_dashboards():
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "confidence.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uids = {d["uid"] for d in datasource["datasources"]}
    used = {
        t["datasource"]["uid"]
        for p in json.loads(DASHBOARDS[0].read_text())["panels"]
        for t in p.get("targets", [])
    }
    assert used <= uids
