"""What the services export besides request latency: event-loop lag, the served model's age, the drift verdict.

In this process (`eta.serving.telemetry.metrics_text`, the same exposition /metrics answers with) and from a real
`bentoml serve` of the pipeline's Bento.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

import bentoml
import httpx
from prometheus_client.parser import text_string_to_metric_families

from eta.model.registry import production_tag
from eta.monitoring.drift_status import drift_status_path, read_drift_status, write_drift_status
from eta.serving.telemetry import export_served_model, metrics_text, sample_event_loop_lag


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
                                "model": "eta_delivery:old", "html": "drift.html"})
    samples = _samples(metrics_text())
    assert samples[("eta_drift_flagged", (("model", "eta_delivery:old"),))] == 1.0
    decided = samples[("eta_drift_report_timestamp_seconds", (("model", "eta_delivery:old"),))]
    assert decided == read_drift_status(status)["decided_at"]

    write_drift_status(status, {"drift_detected": False, "drifted_columns": [], "model": "eta_delivery:abc",
                                "html": "drift.html"})
    assert _samples(metrics_text())[("eta_drift_flagged", (("model", "eta_delivery:abc"),))] == 0.0


def test_the_running_bento_exports_event_loop_lag_model_age_and_the_pipelines_drift_verdict(
        service_url, settings, pipeline_result):
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

    drift = pipeline_result["drift"]
    assert read_drift_status(drift_status_path(settings))["model"] == drift["model"] == tag
    assert samples[("eta_drift_flagged", (("model", tag),))] == float(drift["drift_detected"])
