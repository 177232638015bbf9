"""End to end: the parent flow through a real Prefect server, features in the real Redis, a Bento, a drift report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import redis
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)

from eta.features.store import feature_store
from eta.model.registry import model_metadata, production_tag
from eta.orders.ingest import read_history

STAGES = ["ingest", "features", "train", "build", "drift"]


def test_parent_flow_ran_every_stage_through_the_prefect_api(pipeline_result, prefect_server):
    assert list(pipeline_result["timings_s"]) == STAGES
    with get_client(sync_client=True) as client:
        parent = next(r for r in client.read_flow_runs() if r.name and client.read_flow(r.flow_id).name == "eta-pipeline")
        assert parent.state.is_completed()
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id]))
        )
        names = sorted(client.read_flow(r.flow_id).name for r in children)
        assert names == sorted(["ingest-orders", "build-features", "train-model", "build-bento", "check-drift"])
        assert all(r.state.is_completed() for r in children)
        wanted = ["ingest-report", "feature-tables", "online-staleness", "model-metrics", "gate-decision", "model-slices",
                  "drift-report"]
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=wanted)))
        assert {a.key for a in found} == set(wanted)


def test_features_landed_in_the_real_redis(pipeline_result, settings):
    client = redis.Redis.from_url(settings.redis_url)
    project = settings.feast_project.encode()
    keys = [k for k in client.scan_iter(count=1000) if k.endswith(project)]
    stores_and_markets = settings.simulation.stores + settings.simulation.markets
    assert len(keys) >= 0.9 * stores_and_markets
    online = feature_store(settings, "redis").get_online_features(
        features=feature_store(settings, "redis").get_feature_service(settings.feature_service),
        entity_rows=[{"store_id": 1, "market_id": 1}],
    ).to_dict()
    assert online["store_orders_7d"][0] > 0 and online["total_onshift_dashers"][0] >= 1


def test_staleness_reports_the_newest_online_event_per_view(pipeline_result, settings):
    orders = read_history(settings)
    report = {row["feature_view"]: row for row in pipeline_result["features"]["staleness"]}
    assert pd.Timestamp(report["store_history"]["newest"]) == orders["actual_delivery_time"].max()
    assert pd.Timestamp(report["market_state"]["newest"]) == orders["created_at"].max()
    assert report["market_state"]["entities"] == settings.simulation.markets
    # The age is taken between the features run's start and the artifact's publication, from the newest event.
    with get_client(sync_client=True) as client:
        run, artifact = _stage_artifact(client, "build-features", "online-staleness")
    assert json.loads(artifact.data) == pipeline_result["features"]["staleness"], "the published table is the report"
    for view, newest in (("store_history", orders["actual_delivery_time"].max()),
                         ("market_state", orders["created_at"].max())):
        earliest, latest = (run.start_time - newest).total_seconds(), (artifact.created - newest).total_seconds()
        assert earliest - 0.05 <= report[view]["newest_age_s"] <= latest + 0.05, (view, earliest, latest)


def _stage_artifact(client, flow_name: str, key: str):
    """The parent flow's child run of `flow_name` and the artifact `key` it published, read back through Prefect."""
    parent = next(r for r in client.read_flow_runs() if r.name and client.read_flow(r.flow_id).name == "eta-pipeline")
    children = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent.id])))
    run = next(r for r in children if client.read_flow(r.flow_id).name == flow_name)
    artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
        key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    assert len(artifacts) == 1, artifacts
    return run, artifacts[0]


def test_model_beats_the_naive_baseline_and_was_promoted(pipeline_result, settings):
    trained = pipeline_result["train"]
    assert trained["metrics"]["mae_min"] < 0.8 * trained["baselines"]["naive_median"]["mae_min"]
    assert trained["metrics"]["mae_min"] < trained["baselines"]["platform_estimate"]["mae_min"]
    assert trained["gate"]["promote"] and production_tag(settings) == trained["model"]
    assert all(check["passed"] for check in trained["gate"]["checks"])


def test_drift_report_is_written_as_html_and_json(pipeline_result, settings):
    drift = pipeline_result["drift"]
    html = Path(drift["html"]).read_text()
    assert "Drift Summary" in html and "estimated_store_to_consumer_driving_duration" in html
    # Counted here from the orders held and the production model's training window, not taken from the report.
    orders = read_history(settings)
    train_end = pd.Timestamp(model_metadata(pipeline_result["train"]["model"])["window"]["train_end"])
    reference = int((orders["created_at"] <= train_end).sum())
    recent_start = orders["created_at"].max() - pd.Timedelta(days=settings.drift.recent_days)
    current = int((orders["created_at"] >= recent_start).sum())
    summary = json.loads(Path(drift["json"]).read_text())["summary"]
    assert (summary["reference_orders"], summary["current_orders"]) == (reference, current)
    # One seeded marketplace throughout, nothing shifted: no dataset drift (test_drift shows a shift is caught).
    assert summary["drift_detected"] is False and drift["drift_detected"] is False
    with get_client(sync_client=True) as client:
        _, artifact = _stage_artifact(client, "check-drift", "drift-report")
    pattern = r"Dataset drift: (\w+)\*\* \((\d+) of (\d+) columns.*Reference (\d+) orders.*current (\d+) orders"
    published = re.search(pattern, artifact.data, re.S)
    assert published and published.groups() == ("no", str(len(summary["drifted_columns"])),
                                                 str(summary["columns_checked"]), str(reference), str(current))


def test_rerunning_ingest_and_training_is_safe_and_the_gate_refuses_a_model_no_better(pipeline_result, settings):
    from flows.ingest import ingest_orders
    from flows.train import train_model

    before = production_tag(settings)
    assert ingest_orders()["new_orders"] == 0
    again = train_model()
    assert not again["gate"]["promote"] and again["gate"]["reason"] == "refused: beats champion"
    assert again["champion_metrics"]["mae_min"] == again["metrics"]["mae_min"], "champion scored on the same window"
    assert production_tag(settings) == before

