"""The Grafana dashboard and the alert rules query only what the services really export.

Every metric name in each panel's PromQL and in each alert's expression must appear in `/metrics` of a
running `bentoml serve` (the pipeline's Bento, after one order and one quote); the panels' PromQL must parse
(promtool checks it as recording rules).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from eta.model.registry import production_tag
from eta.monitoring.drift_status import drift_status_path, read_drift_status, write_drift_status

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
# Made by Prometheus itself for every target it scrapes, not by the services.
PROMETHEUS_OWN = {"up"}
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
            "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Series names a PromQL expression selects: identifiers that are not functions, keywords or label names."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, label_replace's arguments
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if match.group() in KEYWORDS or expr[match.end():].lstrip().startswith("("):
            continue  # a keyword or a function call
        names.add(match.group())
    return names


def _dashboard_queries() -> dict[str, list[str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "eta.json").read_text())
    return {panel["title"]: [target["expr"] for target in panel["targets"]] for panel in dashboard["panels"]}


def _alert_queries() -> dict[str, str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def test_metric_names_are_read_from_promql_without_functions_labels_or_keywords():
    expr = _alert_queries()["EtaDegradedAnswers"]
    assert metric_names(expr) == {"eta_events_total", "eta_request_duration_seconds_count"}
    assert metric_names('time() - max by (model) (eta_drift_report_timestamp_seconds) > 8 * 86400') == {
        "eta_drift_report_timestamp_seconds"}
    assert metric_names('rate(a_count[5m]) - ignoring (le) rate(a_bucket{le="0.05"}[$__rate_interval]) or up') == {
        "a_count", "a_bucket", "up"}


def test_the_dashboard_has_the_panels_on_call_reads():
    titles = set(_dashboard_queries())
    assert {"Latency p50 / p99 per endpoint", "Requests per second by status", "Degraded share of answers",
            "L1 / L2 hit ratio", "Online feature age p50 / p90", "Event-loop lag p99 and stalls",
            "Served model age"} <= titles


def test_every_panel_query_is_valid_promql(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus (make test installs it)"
    # Grafana fills $__rate_interval in; promtool needs a duration there.
    rules = [{"record": f"eta:panel_{i}:{j}", "expr": expr.replace("$__rate_interval", "5m")}
             for i, exprs in enumerate(_dashboard_queries().values()) for j, expr in enumerate(exprs)]
    (tmp_path / "panels.yml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    checked = subprocess.run([promtool, "check", "rules", str(tmp_path / "panels.yml")], capture_output=True,
                             text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _exported(service_url: str) -> set[str]:
    text = httpx.get(f"{service_url}/metrics", timeout=10).text
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.fixture(scope="module")
def exported(service_url: str, pipeline_result: dict, settings) -> set[str]:
    """Series names in /metrics once one order and one quote were answered, the event counters flushed, and a
    weekly report's drift verdict is kept (the services export it only once there is one)."""
    verdict = drift_status_path(settings)
    kept = read_drift_status(verdict)
    write_drift_status(verdict, {"drift_detected": False, "drifted_columns": [], "model": production_tag(settings),
                                 "html": "weekly.html", "week": "2026-W01"})
    order = {"store_id": 1, "market_id": 1, "order_protocol": 1, "total_items": 3, "subtotal": 3000,
             "num_distinct_items": 2, "min_item_price": 500, "max_item_price": 1200,
             "estimated_order_place_duration": 251, "estimated_store_to_consumer_driving_duration": 600}
    page = {"market_id": 1, "stores": [{"store_id": 1, "estimated_store_to_consumer_driving_duration": 600}]}
    assert httpx.post(f"{service_url}/eta/order", json=order, timeout=10).status_code == 200
    assert httpx.post(f"{service_url}/eta/quote", json=page, timeout=10).status_code == 200
    deadline = time.monotonic() + 60
    while "eta_events_total" not in (names := _exported(service_url)):
        assert time.monotonic() < deadline, f"event counters never flushed: {sorted(names)}"
        time.sleep(0.2)
    yield names
    if kept is None:
        verdict.unlink()
    else:
        write_drift_status(verdict, kept)


@pytest.mark.parametrize("panel", list(_dashboard_queries()))
def test_each_dashboard_panel_queries_metrics_the_service_exports(panel, exported):
    used = set().union(*(metric_names(expr) for expr in _dashboard_queries()[panel]))
    assert used, f"no metric read from {panel}'s queries"
    assert used <= exported, f"{panel} queries {sorted(used - exported)}, not in /metrics"


@pytest.mark.parametrize("alert", list(_alert_queries()))
def test_each_alert_queries_metrics_the_service_exports(alert, exported):
    used = metric_names(_alert_queries()[alert])
    assert used, f"no metric read from {alert}'s expression"
    assert used - PROMETHEUS_OWN <= exported, f"{alert} queries {sorted(used - PROMETHEUS_OWN - exported)}"
