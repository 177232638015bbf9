"""What the serving core reports, in Prometheus: cache hits and misses, degraded answers, Redis errors,
feature age, request latency per endpoint, event-loop lag, the served model's age and drift verdict, and
the /metrics exposition."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from datetime import datetime
from pathlib import Path

from eta.monitoring.drift_status import read_drift_status
from eta.serving.core import Telemetry


class PrometheusTelemetry(Telemetry):
    """Cache hits and misses, degraded answers, dependency errors and feature age, per worker process.

    Counts add up in a plain dict and reach Prometheus once a second (`flush_every`): a multiprocess
    counter increment costs more than a cached answer's whole feature lookup.
    """

    def __init__(self) -> None:
        # prometheus_client is imported here, after BentoML set PROMETHEUS_MULTIPROC_DIR for the worker.
        from prometheus_client import Counter, Histogram

        self.events = Counter("eta_events", "Cache hits/misses, degraded answers, dependency errors",
                              ["kind", "detail"])
        self.age = Histogram("eta_feature_age_seconds", "Age of online feature vectors when read", ["view"],
                             buckets=(1, 10, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400))

        self.pending: collections.Counter[str] = collections.Counter()

    def count(self, event: str, n: int = 1) -> None:
        self.pending[event] += n

    def flush(self) -> None:
        pending, self.pending = self.pending, collections.Counter()
        for event, n in pending.items():
            if n:
                kind, _, detail = event.partition(":")
                self.events.labels(kind, detail).inc(n)

    async def flush_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self.flush()

    def feature_age(self, view: str, seconds: float) -> None:
        self.age.labels(view).observe(seconds)


async def sample_event_loop_lag(service: str, interval: float = 0.1) -> None:
    """Observe how late this worker's event loop wakes a task that slept `interval`, every time it wakes.

    Whatever holds the loop (a garbage collection, a long synchronous call, a starved CPU) delays every
    request waiting behind it by as much: `eta_event_loop_lag_seconds{service}` shows such a stall in
    production, not only in a benchmark. Ten observations a second per worker, nothing on the request path.
    The services of one `bentoml serve` share /metrics: the label says whose loop stalled.
    """
    lag = _loop_lag_histogram().labels(service)
    while True:
        due = time.monotonic() + interval
        await asyncio.sleep(interval)
        lag.observe(max(0.0, time.monotonic() - due))


@functools.cache
def _loop_lag_histogram():
    from prometheus_client import Histogram

    return Histogram("eta_event_loop_lag_seconds", "How late the event loop woke a task sleeping 0.1 s", ["service"],
                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


class _ServedModel:
    """Values computed when /metrics is read, in the worker that answers it: nothing to keep up to date.

    `eta_model_age_seconds`: since the served model was stored (trained). `eta_drift_flagged` and
    `eta_drift_report_timestamp_seconds`: the latest drift verdict (`eta.monitoring.drift_status`), absent before
    the first report.
    """

    tag: str | None = None
    trained_at = 0.0
    drift_status = Path()

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        if self.tag is None:
            return
        age = GaugeMetricFamily("eta_model_age_seconds", "Seconds since the served model was trained",
                                labels=["model"])
        age.add_metric([self.tag], time.time() - self.trained_at)
        yield age
        status = read_drift_status(self.drift_status)
        if status is None:
            return
        flagged = GaugeMetricFamily("eta_drift_flagged", "1 when the latest drift report found dataset drift",
                                    labels=["model"])
        flagged.add_metric([status["model"]], float(status["drift_detected"]))
        decided = GaugeMetricFamily("eta_drift_report_timestamp_seconds", "When the latest drift report finished",
                                    labels=["model"])
        decided.add_metric([status["model"]], status["decided_at"])
        yield from (flagged, decided)


_served_model = _ServedModel()


def export_served_model(tag: str, trained_at: datetime, drift_status: Path) -> None:
    """Export this worker's model's age and the drift verdict in `drift_status`, computed at each scrape."""
    _served_model.tag, _served_model.trained_at, _served_model.drift_status = tag, trained_at.timestamp(), drift_status


def json_logs(level: int = logging.INFO) -> None:
    """eta's own log records as one JSON object per line on stderr, extra fields included, for log pipelines.

    The serving core logs state changes only (Redis gone, Redis back), never a line per request.
    """
    from pythonjsonlogger.json import JsonFormatter

    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                       rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    root = logging.getLogger("eta")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class LatencyMetrics:
    """Pure-ASGI request latency histogram per endpoint and status, and `GET /metrics` for Prometheus.

    Both the Bento services (in place of BentoML's metrics middleware, which costs ~35 us a request in
    label lookups and multiprocess writes) and the FastAPI reference use it. Under a multiprocess server
    (BentoML sets PROMETHEUS_MULTIPROC_DIR for its workers) /metrics aggregates every worker's values.
    """

    def __init__(self, app, paths: tuple[str, ...], metrics_path: str = "/metrics") -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.metrics_path = metrics_path
        self.series: dict[tuple[str, int], object] = {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == self.metrics_path:
            return await _exposition(send)
        if scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        began, status = time.perf_counter(), [500]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self._observe(scope["path"], status[0], time.perf_counter() - began)

    def _observe(self, path: str, status: int, seconds: float) -> None:
        series = self.series.get((path, status))
        if series is None:
            series = self.series[(path, status)] = _latency_histogram().labels(path, str(status))
        series.observe(seconds)


@functools.cache
def _latency_histogram():
    """One per process, however many apps are built (prometheus_client refuses a second registration)."""
    from prometheus_client import Histogram

    return Histogram("eta_request_duration_seconds", "Request latency", ["endpoint", "status"],
                     buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))


def metrics_text() -> bytes:
    """The Prometheus exposition: every worker's counters and histograms, then this worker's scrape-time gauges."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess, values

    registry = REGISTRY
    # Where this process keeps its values, not whether the variable is set now: Feast sets it when imported,
    # which may come after prometheus_client chose in-memory values.
    if values.ValueClass is not values.MutexValue:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry) + generate_latest(_served_model)


async def _exposition(send) -> None:
    from prometheus_client import CONTENT_TYPE_LATEST

    # Reading every worker's files is file I/O: off the event loop.
    body = await asyncio.to_thread(metrics_text)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode()), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
