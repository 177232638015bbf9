"""What the serving core reports, in Prometheus: cache hits and misses, degraded answers, Redis errors,
feature age, and (for apps without BentoML's metrics middleware) request latency per endpoint."""

from __future__ import annotations

import asyncio
import collections
import time

from eta.serving import Telemetry


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


class LatencyMetrics:
    """Pure-ASGI request count and latency histogram per endpoint, as BentoML's middleware records them."""

    def __init__(self, app, paths: tuple[str, ...]) -> None:
        from prometheus_client import Histogram

        self.app = app
        self.paths = frozenset(paths)
        self.latency = Histogram("eta_request_duration_seconds", "Request latency", ["endpoint", "status"],
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            return await self.app(scope, receive, send)
        began, status = time.perf_counter(), [500]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.latency.labels(scope["path"], str(status[0])).observe(time.perf_counter() - began)
