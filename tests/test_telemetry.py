"""What the services export besides request latency: event-loop lag, the served model's age, the drift verdict.

In this process (`eta.serving.telemetry.metrics_text`, the same exposition /metrics answers with) and from a real
`bentoml serve` of the pipeline's Bento, whose drift verdict is the one the weekly report flow keeps.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone

import bentoml
import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eta.features.definitions import MODEL_FEATURES, model_inputs
from eta.model.registry import load_model, production_tag
from eta.model.training import LABEL, EtaModel
from eta.monitoring.drift_status import drift_status_path, read_drift_status, write_drift_status
from eta.serving.telemetry import export_served_model, metrics_text, sample_event_loop_lag
from eta.settings import get_settings
from monitoring.weekly_report import PREDICTION, iso_week

DRIVE = "estimated_store_to_consumer_driving_duration"


def _samples(text: str | bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    if isinstance(text, bytes):
        text = text.decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def _lag(samples: dict, service: str = "stalled") -> tuple[float, float, float]:
    """A service's observations, observations over 0.1 s, and the sum of lags."""
    count = samples.get(("eta_event_loop_lag_seconds_count", (("service", service),)), 0.0)
    under = samples.get(("eta_event_loop_lag_seconds_bucket", (("le", "0.1"), ("service", service))), 0.0)
    return count, count - under, samples.get(("eta_event_loop_lag_seconds_sum", (("service", service),)), 0.0)


def test_a_coroutine_blocking_the_loop_shows_as_event_loop_lag():
    interval, stall = 0.05, 0.2

    async def stall_the_loop() -> tuple[float, float, float]:
        sampling = asyncio.create_task(sample_event_loop_lag("stalled", interval))
        await asyncio.sleep(0)  # the sampler is asleep now, due `interval` from now
        before = _lag(_samples(metrics_text()))
        # Past the sampler's due time, then the stall: it wakes at least `stall` late, however fast the machine.
        time.sleep(interval + stall)
        deadline = time.monotonic() + 60
        while _lag(_samples(metrics_text()))[0] == before[0]:
            assert time.monotonic() < deadline, "the sampler never woke"
            await asyncio.sleep(0.01)
        sampling.cancel()
        after = _lag(_samples(metrics_text()))
        return tuple(a - b for a, b in zip(after, before))

    observed, over_100ms, lag_sum = asyncio.run(stall_the_loop())
    assert observed >= 1
    assert over_100ms >= 1, "the stall lands above the 0.1 s bucket"
    assert lag_sum >= stall


def test_model_age_and_drift_verdict_are_computed_when_scraped(tmp_path):
    status = tmp_path / "drift_status.json"
    trained_at = datetime.now(timezone.utc) - timedelta(days=3)
    export_served_model("eta_delivery:abc", trained_at, status)

    before = time.time()
    samples = _samples(metrics_text())
    after = time.time()
    age = samples[("eta_model_age_seconds", (("model", "eta_delivery:abc"),))]
    assert before - trained_at.timestamp() <= age <= after - trained_at.timestamp()
    assert not any(name.startswith("eta_drift") for name, _ in samples), "no report yet: no verdict"

    write_drift_status(status, {"drift_detected": True, "drifted_columns": ["total_items"],
                                "model": "eta_delivery:old", "html": "weekly.html", "week": "2026-W41"})
    samples = _samples(metrics_text())
    assert samples[("eta_drift_flagged", (("model", "eta_delivery:old"),))] == 1.0
    decided = samples[("eta_drift_report_timestamp_seconds", (("model", "eta_delivery:old"),))]
    assert decided == read_drift_status(status)["decided_at"]

    write_drift_status(status, {"drift_detected": False, "drifted_columns": [], "model": "eta_delivery:abc",
                                "html": "weekly.html", "week": "2026-W42"})
    assert _samples(metrics_text())[("eta_drift_flagged", (("model", "eta_delivery:abc"),))] == 0.0


def _report(**change) -> dict:
    """A weekly report's verdict fields (`flows.monitor.build_weekly_report`'s), nothing drifted unless changed."""
    return {"week": "2026-W43", "model": "eta_delivery:abc", "html": "weekly-2026-W43.html", "drifted_features": [],
            "prediction_drift": False} | change


def test_the_weekly_verdict_is_drift_of_a_feature_as_served_or_of_the_predictions_newest_week_kept(local_settings):
    from flows.monitor import record_drift_verdict

    path = drift_status_path(local_settings)
    # What check-drift wrote before the weekly report kept the verdict: no week, replaced by the first report.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"drift_detected": True, "drifted_columns": ["hour_of_day"], "model": "eta_delivery:abc",
                                "html": "drift.html", "decided_at": time.time()}))
    assert record_drift_verdict(local_settings, _report())
    assert read_drift_status(path)["drift_detected"] is False and read_drift_status(path)["drifted_columns"] == []

    assert record_drift_verdict(local_settings, _report(prediction_drift=True))
    assert read_drift_status(path)["drift_detected"] is True
    assert read_drift_status(path)["drifted_columns"] == [PREDICTION]

    assert record_drift_verdict(local_settings, _report(drifted_features=[DRIVE], prediction_drift=True))
    assert read_drift_status(path)["drifted_columns"] == [DRIVE, PREDICTION]

    # A person reporting an older week again does not replace the newest week's verdict on-call is alerted on.
    kept = read_drift_status(path)
    assert not record_drift_verdict(local_settings, _report(week="2026-W42", html="weekly-2026-W42.html"))
    assert read_drift_status(path) == kept
    assert record_drift_verdict(local_settings, _report(week="2026-W44", html="weekly-2026-W44.html"))
    assert read_drift_status(path)["week"] == "2026-W44" and read_drift_status(path)["drift_detected"] is False


def _served(rows: pd.DataFrame, model: EtaModel) -> pd.DataFrame:
    """The landed, joined log of `rows` (training-set rows) as the services would have logged their answers."""
    inputs = model_inputs(rows)
    point, low, high = model.predict(inputs)
    return pd.DataFrame(inputs, columns=MODEL_FEATURES).assign(
        kind="order", created_at=rows["created_at"].to_numpy(), minutes=point, range_low=low, range_high=high,
        actual_minutes=rows[LABEL].to_numpy())


@pytest.fixture
def own_landed_log(tmp_path, monkeypatch):
    """The weekly report reads this test's Parquet log, not the session's landed one; reports go where they do."""
    path = tmp_path / "landed.parquet"
    monkeypatch.setenv("ETA_MONITORING__PREDICTIONS_PATH", str(path))
    get_settings.cache_clear()
    yield path
    monkeypatch.undo()
    get_settings.cache_clear()


def test_the_running_bento_exports_event_loop_lag_model_age_and_the_weekly_reports_drift_verdict(
        service_url, settings, pipeline_result, own_landed_log):
    from flows.monitor import weekly_report_flow

    # The lag sampler starts with each service's worker and observes ten times a second.
    deadline = time.monotonic() + 60
    while not all(_lag(samples := _samples(httpx.get(f"{service_url}/metrics", timeout=10).text), service)[0]
                  for service in ("EtaOrder", "EtaQuote")):
        assert time.monotonic() < deadline, f"no event-loop lag observed for both services: {samples}"
        time.sleep(0.2)

    tag = production_tag(settings)
    trained_at = bentoml.models.get(tag).info.creation_time.timestamp()
    before = time.time()
    samples = _samples(httpx.get(f"{service_url}/metrics", timeout=10).text)
    after = time.time()
    age = samples[("eta_model_age_seconds", (("model", tag),))]
    assert before - trained_at <= age <= after - trained_at

    # The newest week of the orders held, answered by the production model, then the same week in rain.
    training = pd.read_parquet(settings.project_path / "training_set.parquet")
    week = iso_week(training["created_at"].max())
    rows = training[training["created_at"] >= week.start].reset_index(drop=True)
    rain = rows.assign(**{DRIVE: rows[DRIVE] * 1.6, LABEL: rows[LABEL] + rows[DRIVE] * 0.6 / 60})
    model = load_model(tag)
    for orders in (rows, rain):
        _served(orders, model).to_parquet(own_landed_log)
        reported_at = time.time()
        report = weekly_report_flow(week=f"{week.start:%Y-%m-%d}")
        status = read_drift_status(drift_status_path(settings))
        assert status["decided_at"] >= reported_at, "the weekly report kept its verdict"
        assert (status["week"], status["model"], status["html"]) == (week.label, tag, report["html"])
        drifted = bool(report["drifted_features"]) or report["prediction_drift"]
        samples = _samples(httpx.get(f"{service_url}/metrics", timeout=10).text)
        assert samples[("eta_drift_flagged", (("model", tag),))] == float(drifted)
        assert samples[("eta_drift_report_timestamp_seconds", (("model", tag),))] == status["decided_at"]
    # The rain week: the drive estimate as served drifted, and the services say so.
    assert DRIVE in report["drifted_features"] and status["drift_detected"], report["drift_scores"]
    assert samples[("eta_drift_flagged", (("model", tag),))] == 1.0
