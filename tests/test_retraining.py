"""Retraining that reacts, with judgement: which weekly verdicts trigger the retrain deployment, and which wait."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from eta.monitoring.retraining import breaches, decide, important_features
from eta.settings import RetrainingSettings

CONFIG = RetrainingSettings(mae_decay_margin=0.10, min_labelled_orders=200, min_new_labelled_orders=1000, cooldown_hours=24)
BAND = (0.75, 0.85)
NOW = datetime(2026, 11, 2, 6, tzinfo=timezone.utc)


def _week(**change) -> dict:
    return {"drifted_features": [], "labelled_orders": 5000, "mae_min": 5.0, "interval_coverage_80": 0.80,
            "under_prediction_rate": 0.5, "by_market": {"1": _market(), "2": _market()}} | change


def _market(**change) -> dict:
    return {"labelled_orders": 2500, "under_prediction_rate": 0.5} | change


@pytest.mark.parametrize("week,expected", [
    (_week(), []),
    (_week(drifted_features=["store_orders_28d"]), []),  # a feature the model hardly uses
    (_week(drifted_features=["estimated_store_to_consumer_driving_duration"]), ["drift of important features"]),
    (_week(mae_min=5.4), []),  # within 10% of the champion's 5.0
    (_week(mae_min=5.6), ["MAE decayed"]),
    (_week(interval_coverage_80=0.70), ["range coverage 0.700 outside"]),
    (_week(mae_min=9.0, interval_coverage_80=0.5, labelled_orders=150), []),  # too few actuals to judge quality
    (_week(mae_min=9.0, drifted_features=["total_items"]), ["drift of important features", "MAE decayed"]),
    (_week(under_prediction_rate=0.7), ["orders arriving after the ETA above 65%: overall 0.700"]),
    # One market of two running late: the overall numbers hide it (rain there: drives longer than estimated).
    (_week(under_prediction_rate=0.6, by_market={"1": _market(), "2": _market(under_prediction_rate=0.8)}),
     ["orders arriving after the ETA above 65%: market 2 0.800"]),
    (_week(by_market={"1": _market(), "2": _market(under_prediction_rate=0.9, labelled_orders=150)}), []),  # too few
    (_week(under_prediction_rate=0.3), []),  # orders arriving early: the MAE and the range judge that
])
def test_a_breach_is_drift_of_an_important_feature_decay_past_the_margin_coverage_out_of_band_or_orders_running_late(
        week, expected):
    important = ["estimated_store_to_consumer_driving_duration", "total_items", "hour_of_day"]
    found = breaches(week, champion_mae=5.0, important=important, config=CONFIG, band=BAND)
    assert len(found) == len(expected) and all(text.startswith(start) for text, start in zip(found, expected)), found


def test_a_breach_triggers_only_with_enough_new_orders_and_outside_the_cool_down():
    found = ["MAE decayed: 6.00 min vs 5.50"]
    assert decide([], 10_000, None, NOW, CONFIG).trigger is False
    assert decide(found, 10_000, None, NOW, CONFIG).trigger
    few = decide(found, 999, None, NOW, CONFIG)
    assert not few.trigger and "999 orders" in few.held_back and few.breaches == found
    recent = decide(found, 10_000, NOW - timedelta(hours=23), NOW, CONFIG)
    assert not recent.trigger and "cool-down" in recent.held_back
    assert decide(found, 10_000, NOW - timedelta(hours=25), NOW, CONFIG).trigger
    assert decide(found, 10_000, None, NOW, CONFIG).reason == found[0]


def test_important_features_are_the_ones_the_trees_split_on_most():
    import lightgbm as lgb
    import numpy as np

    from eta.features.definitions import MODEL_FEATURES
    from eta.model.training import EtaModel

    rng = np.random.default_rng(1)
    inputs = rng.uniform(0, 1, size=(2000, len(MODEL_FEATURES)))
    drive = MODEL_FEATURES.index("estimated_store_to_consumer_driving_duration")
    items = MODEL_FEATURES.index("total_items")
    label = 10 * inputs[:, drive] + 2 * inputs[:, items] + rng.normal(0, 0.01, 2000)
    booster = lgb.train({"objective": "regression", "verbosity": -1, "num_threads": 1}, lgb.Dataset(inputs, label),
                        num_boost_round=30)
    top = important_features(EtaModel(booster, -0.1, 0.1, {}), 2)
    assert top == ["estimated_store_to_consumer_driving_duration", "total_items"]


def _replay_week(settings, week_start: str) -> int:
    """The week's ingested orders answered by the production model through the serving core, which logs them."""
    import asyncio

    import pandas as pd

    from eta.features.definitions import ORDER_REQUEST_FIELDS
    from eta.model.registry import load_model, production_tag
    from eta.orders.ingest import read_history
    from eta.serving.api import Order
    from eta.serving.core import Predictor, redis_client

    history = read_history(settings)
    start = pd.Timestamp(week_start, tz="UTC")
    week = history[(history["created_at"] >= start) & (history["created_at"] < start + pd.Timedelta(days=7))]
    tag = production_tag(settings)

    async def answer_all() -> None:
        client = redis_client(settings.redis_url)
        predictor = Predictor(load_model(tag), tag, settings, client)
        try:
            for _, row in week.iterrows():
                await predictor.order(Order(**{f: getattr(row[f], "item", lambda v=row[f]: v)() for f in ORDER_REQUEST_FIELDS},
                                            created_at=row["created_at"].to_pydatetime()))
        finally:
            await predictor.drain()
            await client.aclose()

    asyncio.run(answer_all())
    return len(week)


def test_the_feedback_loop_triggers_the_retrain_deployment_with_its_reason_and_then_holds_back(
        settings, pipeline_result, prefect_server, monkeypatch):
    """Through the real Prefect server: land the logged week, report it, and on a breach run the retrain
    deployment with the reason; a second look within the cool-down triggers nothing."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from eta.settings import get_settings
    from flows.feedback import feedback_loop
    from flows.train import train_model

    def decisions() -> int:
        # Filtered by key: the session's server holds every test's artifacts, and a page of them in id order
        # (random uuids) holds any given ones only by chance.
        with get_client(sync_client=True) as client:
            return len(client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["retrain-decision"]))))

    decided_before = decisions()
    deployment = train_model.to_deployment(name="retrain-feedback-test")  # no worker: the run waits, visible
    deployment.apply()
    answered = _replay_week(settings, "2026-10-05")
    assert answered > 1000

    # A breach every week has: coverage can never fall in [0.99, 1.0] for an 80% range.
    monkeypatch.setenv("ETA_RETRAINING__DEPLOYMENT", "train-model/retrain-feedback-test")
    monkeypatch.setenv("ETA_RETRAINING__MIN_NEW_LABELLED_ORDERS", "0")
    monkeypatch.setenv("ETA_GATE__COVERAGE_BAND", "[0.99, 1.0]")
    monkeypatch.setenv("ETA_RETRAINING__COOLDOWN_HOURS", "0")
    get_settings.cache_clear()
    first = feedback_loop(week="2026-10-05")
    assert first["landed"]["landed"] >= answered and first["report"]["labelled_orders"] >= answered * 0.99
    assert first["decision"]["trigger"] and any(b.startswith("range coverage") for b in first["decision"]["breaches"])
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(first["retrain_run"])
        assert run.parameters == {"namespace": None, "reason": first["decision"]["reason"]}
        assert "auto-retrain" in run.tags

    monkeypatch.setenv("ETA_RETRAINING__COOLDOWN_HOURS", "24")
    get_settings.cache_clear()
    again = feedback_loop(week="2026-10-05")
    assert not again["decision"]["trigger"] and "cool-down" in again["decision"]["held_back"]
    assert again["retrain_run"] is None and again["landed"]["landed"] == 0, "the week was landed once"
    assert decisions() == decided_before + 2, "every decision, triggered or not, is recorded"
    get_settings.cache_clear()


def test_a_week_without_logged_answers_completes_with_nothing_to_judge_and_eta_report_says_why(
        settings, pipeline_result, prefect_server):
    """A fresh stack's Monday: the feedback loop completes, records that there was nothing to judge and triggers
    nothing; a person asking `eta report` for that week gets the one-line error."""
    import json

    from prefect import get_client
    from prefect.client.schemas.filters import (ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey, FlowFilter,
                                                FlowFilterName)

    from flows.feedback import feedback_loop
    from monitoring.weekly_report import iso_week
    from tests.test_cli_errors import error_line, eta

    quiet = "2026-09-21"  # the week before the simulated orders begin: no answer logged in it
    label = iso_week(quiet).label
    result = feedback_loop(week=quiet)
    assert result["report"] is None and result["retrain_run"] is None
    assert not result["decision"]["trigger"] and result["decision"]["reason"].startswith("nothing to judge")
    with get_client(sync_client=True) as client:
        flows = FlowFilter(name=FlowFilterName(any_=["feedback-loop", "weekly-report"]))
        runs = client.read_flow_runs(flow_filter=flows)
        (run,) = [r for r in runs if r.parameters.get("week") == quiet]  # the loop's own: no weekly report was run
        assert run.state.is_completed()
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["retrain-decision"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    (row,) = json.loads(artifact.data)
    assert row["week"] == label and row["triggered"] is False and row["held back"].startswith("nothing to judge")

    line = error_line(eta("report", "--week", quiet, api_url=prefect_server), exit_code=1)
    assert label in line and ("no landed" in line or "no logged" in line), line
