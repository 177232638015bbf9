"""The weekly report: drift of the features as served, prediction drift and quality, per ISO week, in a real
Evidently workspace, its dashboard served by `evidently ui` and the weekly HTML, both rendered in headless Chromium.

The world: four simulated weeks (two markets, store history fixed as in the other model tests); a small model
trained on weeks 1-2 (its reference); the prediction log of weeks 3-4 built as serving would log it.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eta.features.definitions import MODEL_FEATURES, model_inputs
from eta.model.registry import promote, save_model
from eta.model.training import LABEL, EtaModel, split_by_time, train_eta_model
from eta.orders.schema import delivery_minutes
from eta.orders.simulate import simulate_orders
from eta.settings import MonitoringSettings, Settings, SimulationSettings, TrainingSettings
from flows.processes import free_port, server_process
from monitoring.weekly_report import CALENDAR_FEATURES, training_reference, weekly_report, whole_weeks
from tests.helpers import fixed_store_history
from tests.test_browser import rendered_dom, visible_text

START = pd.Timestamp("2026-10-05", tz="UTC")  # a Monday: weeks 2026-W41 .. W44
WEEK_3, WEEK_4 = "2026-10-19", "2026-10-26"
TRAINING = TrainingSettings(num_boost_round=80, holdout_days=2, calibration_days=2)
DRIVE = "estimated_store_to_consumer_driving_duration"
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def world() -> pd.DataFrame:
    orders = simulate_orders(SimulationSettings(markets=2, stores=60, days=28, orders_per_store_day=12, seed=11,
                                                start=START.date()))
    return fixed_store_history(orders.assign(**{LABEL: delivery_minutes(orders)}))


@pytest.fixture(scope="module")
def reference_rows(world) -> pd.DataFrame:
    return world[world["created_at"] < START + pd.Timedelta(days=14)].reset_index(drop=True)


@pytest.fixture(scope="module")
def model(reference_rows) -> EtaModel:
    return train_eta_model(split_by_time(reference_rows, TRAINING), TRAINING)


@pytest.fixture(scope="module")
def reference(model, reference_rows) -> pd.DataFrame:
    return training_reference(reference_rows, model)


def served_log(model: EtaModel, orders: pd.DataFrame) -> pd.DataFrame:
    """The landed, joined prediction log of `orders` as the service would have written it."""
    inputs = model_inputs(orders)
    point, low, high = model.predict(inputs)
    return pd.DataFrame(inputs, columns=MODEL_FEATURES).assign(
        prediction_id=[uuid.uuid4().hex for _ in range(len(orders))], order_id=[f"o{i}" for i in range(len(orders))],
        kind="order", created_at=orders["created_at"].to_numpy(), logged_at=orders["created_at"].to_numpy(),
        model_version="eta_weekly:test",
        store_id=orders["store_id"].to_numpy(), store_history_age_s=30.0, market_state_age_s=1.0, degraded=False,
        minutes=point, range_low=low, range_high=high, actual_minutes=orders[LABEL].to_numpy(),
    )


@pytest.fixture(scope="module")
def log(model, world) -> pd.DataFrame:
    served = served_log(model, world[world["created_at"] >= START + pd.Timedelta(days=14)])
    # A tenth of the orders not delivered yet (no actual joined), and a sample of quotes: neither is judged for quality.
    served.loc[served.index % 10 == 3, "actual_minutes"] = np.nan
    quotes = served.sample(300, random_state=1).assign(kind="quote", actual_minutes=np.nan, minutes=1.0)
    return pd.concat([served, quotes], ignore_index=True)


def shifted_log(model: EtaModel, world: pd.DataFrame, market: int, factor: float) -> pd.DataFrame:
    """Week 3 with every drive in `market` longer by `factor` (rain): the drive estimate and the delivery grow."""
    week = world[(world["created_at"] >= pd.Timestamp(WEEK_3, tz="UTC"))
                 & (world["created_at"] < pd.Timestamp(WEEK_4, tz="UTC"))].copy()
    rain = week["market_id"] == market
    extra = week.loc[rain, DRIVE] * (factor - 1)
    week.loc[rain, DRIVE] += extra
    week.loc[rain, LABEL] += extra / 60
    return served_log(model, week)


def settings_in(folder: Path, **monitoring: object) -> Settings:
    return Settings(data_dir=folder, feast_project="eta_weekly", monitoring=MonitoringSettings(**monitoring))


def test_an_unchanged_world_flags_no_drift_calendar_features_included(log, reference, tmp_path):
    report = weekly_report(log, reference, WEEK_3, settings_in(tmp_path), "eta_weekly:test")
    assert report["week"] == "2026-W43" and report["calendar_judged"]
    assert set(CALENDAR_FEATURES) <= set(report["features_judged"]) == set(MODEL_FEATURES)
    assert report["drifted_features"] == [] and report["drift_share"] == 0.0, report["drift_scores"]
    assert not report["prediction_drift"], report["prediction_drift_score"]
    assert max(report["drift_scores"][c] for c in CALENDAR_FEATURES) < 0.1


def test_a_week_is_judged_against_whole_reference_weeks_on_its_own_weekdays(log, reference, tmp_path):
    ten_days = reference[reference["created_at"] >= START + pd.Timedelta(days=4)]
    trimmed = whole_weeks(ten_days)
    assert trimmed["created_at"].max() == ten_days["created_at"].max()
    assert trimmed["created_at"].min().floor("D") == START + pd.Timedelta(days=7)  # the reference's last 7 days
    assert trimmed["day_of_week"].nunique() == 7
    # Monday to Wednesday: fewer couriers and orders than a week with its weekend; judged against those weekdays.
    partial = log[pd.to_datetime(log["created_at"], utc=True) < pd.Timestamp(WEEK_3, tz="UTC") + pd.Timedelta(days=3)]
    report = weekly_report(partial, reference, WEEK_3, settings_in(tmp_path), "eta_weekly:test")
    assert report["calendar_judged"] and report["weekdays"] == [0, 1, 2]
    assert report["reference_orders"] == reference["day_of_week"].isin([0, 1, 2]).sum()
    assert report["drifted_features"] == [], report["drift_scores"]
    assert "on the same weekdays as the week's (Mon, Tue, Wed)" in Path(report["html"]).read_text()


def test_under_a_week_of_reference_the_calendar_features_are_left_out(log, reference, tmp_path):
    five_days = reference[reference["created_at"] >= START + pd.Timedelta(days=9)]
    report = weekly_report(log, five_days, WEEK_3, settings_in(tmp_path), "eta_weekly:test")
    assert not report["calendar_judged"] and not set(CALENDAR_FEATURES) & set(report["features_judged"])
    assert report["reference_orders"] == len(five_days)
    assert "calendar features not judged" in Path(report["html"]).read_text()


def test_rain_in_one_market_flags_the_drive_estimate_and_prediction_drift(model, world, reference, tmp_path):
    rain = shifted_log(model, world, market=1, factor=1.4)
    report = weekly_report(rain, reference, WEEK_3, settings_in(tmp_path), "eta_weekly:test")
    assert DRIVE in report["drifted_features"], report["drift_scores"]
    assert report["prediction_drift"], report["prediction_drift_score"]
    assert report["drift_share"] == pytest.approx(len(report["drifted_features"]) / len(report["features_judged"]))
    assert not set(CALENDAR_FEATURES) & set(report["drifted_features"])


def _quality(frame: pd.DataFrame) -> dict[str, float]:
    actual, point = frame["actual_minutes"].to_numpy(), frame["minutes"].to_numpy()
    error = np.abs(point - actual)
    return {"mae_min": error.mean(), "p90_abs_err_min": np.percentile(error, 90),
            "under_prediction_rate": np.mean(actual > point),
            "interval_coverage_80": np.mean((actual >= frame["range_low"]) & (actual <= frame["range_high"])),
            "labelled_orders": len(frame)}


def test_quality_numbers_equal_an_independent_numpy_computation(log, reference, tmp_path):
    report = weekly_report(log, reference, WEEK_3, settings_in(tmp_path), "eta_weekly:test")
    logged = pd.to_datetime(log["created_at"], utc=True)
    week = log[(log["kind"] == "order") & (logged >= pd.Timestamp(WEEK_3, tz="UTC"))
               & (logged < pd.Timestamp(WEEK_4, tz="UTC"))]
    judged = week[week["actual_minutes"].notna()]
    assert report["orders"] == len(week) and 0 < len(judged) < len(week)
    assert {k: report[k] for k in _quality(judged)} == pytest.approx(_quality(judged), rel=1e-9)
    by_market = {str(int(m)): _quality(rows) for m, rows in judged.groupby("market_id")}
    assert report["by_market"].keys() == by_market.keys() == {"1", "2"}
    for market, numbers in by_market.items():
        assert report["by_market"][market] == pytest.approx(numbers, rel=1e-9), market
    hours = pd.to_datetime(judged["created_at"], utc=True).dt.hour
    bands = pd.cut(hours, [0, 6, 11, 14, 17, 21, 24], right=False,
                   labels=["00-06", "06-11", "11-14", "14-17", "17-21", "21-24"])
    by_band = {str(band): _quality(rows) for band, rows in judged.groupby(bands, observed=True)}
    assert report["by_hour_band"].keys() == by_band.keys() and len(by_band) == 6
    for band, numbers in by_band.items():
        assert report["by_hour_band"][band] == pytest.approx(numbers, rel=1e-9), band


def test_a_big_week_is_sampled_and_the_report_says_how_much(log, reference, tmp_path):
    report = weekly_report(log, reference, WEEK_3, settings_in(tmp_path, max_rows=1000), "eta_weekly:test")
    assert report["sampled_orders"] == 1000 < report["orders"] and report["reference_sampled"] == 1000
    html = Path(report["html"])
    assert html.name == "weekly-2026-W43.html" and html.parent == tmp_path / "eta_weekly" / "reports"
    assert f"1,000 of {report['orders']:,} orders (sampled)" in html.read_text()
    snapshot = json.loads(Path(report["snapshot"]).read_text())
    assert snapshot["metadata"]["sampled_orders"] == "1000"


def _weeks_in_workspace(workspace: Path, project: str) -> list[str]:
    from evidently.ui.workspace import Workspace

    ws = Workspace.create(str(workspace))
    (found,) = ws.search_project(project)
    return sorted(ws.get_run(found.id, run).metadata["week"] for run in ws.list_runs(found.id))


def test_the_workspace_holds_one_snapshot_per_week_and_a_week_reported_again_replaces_its_own(log, reference, tmp_path):
    settings = settings_in(tmp_path)
    first = weekly_report(log, reference, WEEK_3, settings, "eta_weekly:test")
    weekly_report(log, reference, WEEK_4, settings, "eta_weekly:test")
    assert _weeks_in_workspace(tmp_path / "evidently", "eta_weekly") == ["2026-W43", "2026-W44"]
    again = weekly_report(log, reference, "2026-10-21", settings, "eta_weekly:test")  # a Wednesday of W43
    assert _weeks_in_workspace(tmp_path / "evidently", "eta_weekly") == ["2026-W43", "2026-W44"]
    assert Path(again["snapshot"]).exists() and not Path(first["snapshot"]).exists()


@pytest.fixture(scope="module")
def reported_workspace(log, reference, tmp_path_factory):
    """Two weeks reported into one workspace, the way the weekly flow leaves it."""
    folder = tmp_path_factory.mktemp("weekly")
    settings = settings_in(folder)
    reports = [weekly_report(log, reference, week, settings, "eta_weekly:test") for week in (WEEK_3, WEEK_4)]
    return folder / "evidently", reports


def _number_before(label: str, text: str) -> float:
    found = re.search(r"(\d+(?:\.\d+)?)\s*" + re.escape(label), text)
    assert found, text[:3000]
    return float(found.group(1))


def test_the_evidently_ui_dashboard_shows_the_latest_weeks_mae(reported_workspace, tmp_path):
    workspace, reports = reported_workspace
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).with_name("evidently")), "ui", "--workspace", str(workspace),
               "--host", "127.0.0.1", "--port", str(port)]
    with server_process(command, f"{url}/api/projects", dict(os.environ), tmp_path / "evidently_ui.log"):
        with urllib.request.urlopen(f"{url}/api/projects", timeout=30) as answer:
            (project,) = [p for p in json.load(answer) if p["name"] == "eta_weekly"]
        text = visible_text(rendered_dom(f"{url}/projects/{project['id']}", tmp_path / "chromium"))
    latest = reports[-1]
    assert abs(_number_before("MAE, minutes", text) - latest["mae_min"]) <= 0.005, text[:3000]
    assert abs(_number_before("80% range coverage", text) - latest["interval_coverage_80"]) <= 0.005
    for panel in ("MAE, minutes by hour band (UTC)", "p90 absolute error, minutes", "market 1", "market 2",
                  "Drift of features as served: share drifted"):
        assert panel in text, panel


def test_the_weekly_html_shows_the_mae(reported_workspace, tmp_path):
    _, reports = reported_workspace
    latest = reports[-1]
    text = visible_text(rendered_dom(Path(latest["html"]).as_uri(), tmp_path / "chromium"))
    headline = re.search(r"MAE\s*(\d+\.\d+) min", text)
    assert headline and headline.group(1) == f"{latest['mae_min']:.2f}", text[:3000]
    # Evidently's own widget, rendered by its scripts, says the same.
    assert f"Mean value of 'abs_error_min': current: {latest['mae_min']:.3f}" in text, text[:3000]


def test_the_weekly_flow_reads_the_landed_log_and_publishes_the_headline(local_settings, prefect_server, model,
                                                                          reference_rows, log):
    """The `weekly-report` flow through the real Prefect server: the production model's training rows as the
    reference, the week's day folders of the joined log, and the artifact read back through Prefect."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    from flows.monitor import weekly_report_flow

    split = split_by_time(reference_rows, TRAINING)
    tag = save_model(model, {"window": split.window, "metrics": {"mae_min": 1.0}}, local_settings, {"gate": "passed"})
    promote(tag, local_settings)
    reference_rows.to_parquet(local_settings.project_path / "training_set.parquet")
    joined = local_settings.project_path / "predictions_joined"
    for day, rows in log.groupby(pd.to_datetime(log["created_at"], utc=True).dt.strftime("%Y-%m-%d")):
        (joined / f"day={day}").mkdir(parents=True)
        rows.to_parquet(joined / f"day={day}" / "part.parquet")

    report = weekly_report_flow(week="2026-10-22")
    assert report["model"] == tag and report["week"] == "2026-W43"
    # The model's rows (train and calibration: not the holdout), in whole weeks: its last 7 of 12 days.
    trained_on = reference_rows[reference_rows["created_at"] <= pd.Timestamp(split.window["calibration_end"])]
    assert report["reference_orders"] == len(whole_weeks(trained_on)) < len(trained_on)
    assert report["drifted_features"] == [] and Path(report["snapshot"]).exists()
    with get_client(sync_client=True) as client:
        # This test's run: other tests' weekly reports share the session's Prefect server.
        run = next(r for r in client.read_flow_runs() if client.read_flow(r.flow_id).name == "weekly-report"
                   and r.parameters.get("week") == "2026-10-22")
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["weekly-report"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    assert f"| MAE, min | {report['mae_min']:.2f} |" in artifact.data and report["snapshot"] in artifact.data


def test_the_reference_is_the_production_models_own_rows_after_a_later_training_run_replaced_the_training_set(
        local_settings, model, reference_rows, world):
    """A retrain the gate refused rewrites the training set: the week is still judged against the rows the serving
    model learned from, which the train flow keeps when it promotes a model."""
    from eta.errors import UserError
    from eta.storage import write_table
    from flows.monitor import read_reference
    from flows.train import reference_path

    split = split_by_time(reference_rows, TRAINING)
    tag = save_model(model, {"window": split.window, "metrics": {"mae_min": 1.0}}, local_settings, {"gate": "passed"})
    promote(tag, local_settings)
    later = world[world["created_at"] >= START + pd.Timedelta(days=14)]  # a refused retrain's window
    later.to_parquet(local_settings.project_path / "training_set.parquet")
    with pytest.raises(UserError, match="holds none of"):
        read_reference(local_settings, tag)
    learned = pd.concat([split.train, split.calibration], ignore_index=True)
    write_table(learned, reference_path(local_settings, tag))
    reference = read_reference(local_settings, tag)
    assert len(reference) == len(learned) and reference["created_at"].max() == learned["created_at"].max()
