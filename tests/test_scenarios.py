"""A scenario at small scale through the real loop (`flows.scenarios`): a menu change reaches a served world, and the
first weekly report after it flags it and triggers the retrain deployment.

A world of its own (2 markets, 20 stores, own Feast project in the session's Redis db): two weeks of history, a
model trained by the train flow on the newest 7 days (`training.window_days`), then three days with bigger baskets
and slower kitchens sent through a real `bentoml serve` of EtaOrder, ingested and refreshed day by day, and the
feedback flow (land, join, weekly report, decision) through the session's Prefect server. The retrain deployment
is registered without a worker: the triggered run waits, visible with its reason, and is cancelled afterwards.
`make scenarios` runs the four changes and the unchanged world at full scale.
"""

from __future__ import annotations

import uuid

import pandas as pd
import pytest
from prefect import get_client
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled

from eta.model.registry import model_metadata, production_tag
from eta.orders.ingest import read_history
from eta.settings import SimulationSettings, WorldChange, get_settings
from flows.feedback import feedback_loop
from flows.scenarios import drop_namespace, live_week, open_world, serving
from flows.train import reference_path, train_model

FIRST_DAY = 14  # 2026-10-05, a Monday
MENU = WorldChange(kind="menu_change", from_day=FIRST_DAY, size=0.4)
WORLD = SimulationSettings(markets=2, stores=20, days=FIRST_DAY + 4, orders_per_store_day=12, seed=5,
                           start="2026-09-21", changes=[MENU])
SERVED_DAYS = 3


@pytest.fixture
def loop_settings(settings, prefect_server, monkeypatch):
    """The feedback loop's settings for a world whose days pass in seconds: no cool-down (it counts Prefect's real
    hours), a retrain on the served days' orders, a 7-day training window; the retrain deployment without a worker."""
    deployment = train_model.to_deployment(name="retrain-scenario-test")
    deployment.apply()
    for name, value in {"ETA_RETRAINING__COOLDOWN_HOURS": "0", "ETA_RETRAINING__MIN_NEW_LABELLED_ORDERS": "300",
                        "ETA_TRAINING__WINDOW_DAYS": "7",
                        "ETA_RETRAINING__DEPLOYMENT": "train-model/retrain-scenario-test"}.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_a_menu_change_is_flagged_by_the_first_weekly_report_and_triggers_the_retrain(loop_settings, tmp_path):
    namespace = f"eta_scn_{uuid.uuid4().hex[:8]}"
    try:
        world, trained = open_world(namespace, WORLD, FIRST_DAY, tmp_path / "batches")
        tag = production_tag(world.settings)
        held = read_history(world.settings)["created_at"]
        newest_week = held.max() - pd.Timedelta(days=7)
        assert pd.Timestamp(model_metadata(tag)["window"]["train_start"]) >= newest_week > held.min(), \
            "trained on the newest 7 days of the two weeks held"
        assert reference_path(world.settings, tag).exists(), "the promoted model's rows, the report's reference"
        monday = world.day(FIRST_DAY)
        with serving(world, tmp_path) as url:
            live_week(world, url, monday, days=SERVED_DAYS)
        result = feedback_loop(namespace=namespace, week=f"{monday:%Y-%m-%d}")
        report, decision = result["report"], result["decision"]

        answered = [a for a in world.answers if a["model_version"] == trained["model"]]
        assert len(answered) == len(world.answers) > 500 and not any(a["degraded"] for a in answered)
        assert result["landed"]["landed"] == len(answered) and report["orders"] == len(answered)
        assert report["labelled_orders"] >= 0.95 * len(answered), "the served orders joined with their actual times"
        # Bigger baskets are in the request: the basket features drift; slower kitchens are not, so the MAE decays.
        assert {"total_items", "num_distinct_items"} <= set(report["drifted_features"]), report["drift_scores"]
        held_out = trained["metrics"]["mae_min"]
        assert report["mae_min"] > 1.1 * held_out and report["under_prediction_rate"] > 0.8
        assert decision["trigger"] and any(b.startswith("MAE decayed") for b in decision["breaches"]), decision
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(result["retrain_run"])
            assert run.parameters == {"namespace": namespace, "reason": decision["reason"]}
            assert "auto-retrain" in run.tags and run.state.type == StateType.SCHEDULED
            client.set_flow_run_state(run.id, Cancelled(), force=True)  # no worker: it would wait for ever
    finally:
        drop_namespace(get_settings().in_namespace(namespace))
