"""The Bento: two services for the two prediction moments, scaled independently.

- `EtaQuote` (`POST /eta/quote`): before the order, a restaurant list page of up to `max_stores`
  stores; cached per store in-process (L1) and in Redis shared by replicas (L2).
- `EtaOrder` (`POST /eta/order`): one placed order, freshest market state, no answer cache. It is the
  Bento's entry service and also forwards `/eta/quote`, so `bentoml serve` answers both on one port;
  deployed, each service is its own deployment (`--service-name EtaQuote`) with its own workers.

Both run `eta.serving.core.Predictor` on the production model (inside a built Bento the only model packed
is the production one, so `latest` resolves to it). Readiness turns true only after the model is
loaded, the Redis pool is open, the Feast registry was read and warm-up predictions ran.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
from functools import lru_cache
from pathlib import Path

import bentoml

from bentos import bentoml_request_path
from eta.features.store import feature_store
from eta.model.registry import load_model_from, production_tag
from eta.monitoring.drift_status import drift_status_path
from eta.serving.api import Eta, Order, Quote, QuoteRequest, QuoteStore
from eta.serving.core import Predictor, redis_client
from eta.serving.http_guard import Guard
from eta.serving.telemetry import (
    LatencyMetrics,
    PrometheusTelemetry,
    export_served_model,
    json_logs,
    sample_event_loop_lag,
)
from eta.settings import get_settings

settings = get_settings()
json_logs()
bentoml_request_path.install()
MODEL_TAG = os.environ.get("ETA_MODEL_TAG") or production_tag(settings) or f"{settings.model_name}:latest"
# A 1 s BentoML request timeout, not the 60 s default: an answer later than that is no use to the app, and
# requests are bounded inside anyway (feature reads by `serving.feature_timeout_ms`, Redis sockets by their
# timeouts). BentoML's timeout middleware kept a timer per request alive for the whole timeout (at 60 s and
# 500 req/s, ~900k objects every gen-2 collection walked); `bentoml_request_path` now cancels it once answered.
TRAFFIC = {"timeout": 1, "max_concurrency": 512}
# An access-log line per request costs more than a cached quote; errors are still logged.
LOGGING = {"access": {"enabled": False}}
# BentoML's sampler records every span even at sample rate 0 (RECORD_ONLY): an OpenTelemetry span
# per request, at a cost in CPU and garbage. Off unless a deployment turns tracing on
# (OTEL_SDK_DISABLED=false plus BentoML's tracing config).
ENVS = [{"name": "OTEL_SDK_DISABLED", "value": "true"}]
TRACING = {"excluded_urls": ["/eta/order", "/eta/quote"]}
# Request latency per endpoint comes from `eta.serving.telemetry.LatencyMetrics` (as in the FastAPI reference):
# BentoML's own metrics middleware spends ~35 us a request on label lookups and multiprocess writes.
METRICS = {"enabled": False}
WARM_UP_ORDER = Order(store_id=0, market_id=1, order_protocol=1, total_items=1, subtotal=0, num_distinct_items=1,
                      min_item_price=0, max_item_price=0, estimated_order_place_duration=0,
                      estimated_store_to_consumer_driving_duration=0)


@lru_cache
def _telemetry() -> PrometheusTelemetry:
    return PrometheusTelemetry()


class _Serving:
    """What both services share: the model, the predictor, warm-up and readiness."""

    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        # On an instance, BentoML resolves the declared model to the stored one.
        self.eta_model = load_model_from(Path(self.model.path), self.model.info.metadata)
        # Reading the feature service checks the registry knows it before the first request.
        feature_store(settings, "redis").get_feature_service(settings.feature_service)
        self.ready = False

    @bentoml.on_startup
    async def open_and_warm(self) -> None:
        # BentoML binds an API method afresh on every request (reading its signature each time, ~20 us);
        # bound once here, the instance attribute shadows the class-level descriptor from now on.
        for name in self.bento_service.apis:
            setattr(self, name, getattr(self, name))
        client = redis_client(settings.redis_url, settings.redis_type)
        self.predictor = Predictor(self.eta_model, str(self.model.tag), settings, client, _telemetry())
        for _ in range(20):
            await self.predictor.order(WARM_UP_ORDER, record=False)  # warm-up answers stay out of the log
            await self.predictor.quote(QuoteRequest(market_id=1, stores=[QuoteStore(
                store_id=0, estimated_store_to_consumer_driving_duration=0)]), record=False)
        self.predictor.quotes.fresh.clear()
        self.flushing = asyncio.create_task(_telemetry().flush_every(1.0))
        self.lag_sampling = asyncio.create_task(sample_event_loop_lag(self.bento_service.name))
        export_served_model(str(self.model.tag), self.model.info.creation_time, drift_status_path(settings))
        # Everything loaded so far lives as long as the worker: keep it out of every later collection.
        gc.collect()
        gc.freeze()
        self.ready = True

    @bentoml.on_shutdown
    async def ship_prediction_log(self) -> None:
        # Records the log has not shipped yet go to Redis before the worker exits (a scale-down, a new
        # version); what Redis does not take stays in the spool, which `eta land` ships once the worker is gone.
        if self.ready:
            await self.predictor.drain()

    def __is_ready__(self) -> bool:
        return self.ready

    @bentoml.api(route="/debug/gc")
    def gc_state(self) -> dict[str, object]:
        """Objects the collector tracks in this worker (outside the frozen start-up set), by type, and its runs."""
        tracked = gc.get_objects()
        types = collections.Counter(type(obj).__name__ for obj in tracked)
        return {"tracked": len(tracked), "frozen": gc.get_freeze_count(), "top_types": dict(types.most_common(8)),
                "collections": [stats["collections"] for stats in gc.get_stats()]}


@bentoml.service(name="EtaQuote", workers=1, traffic=TRAFFIC, logging=LOGGING, envs=ENVS, tracing=TRACING,
                  metrics=METRICS)
class EtaQuote(_Serving):
    @bentoml.api(route="/eta/quote")
    async def quote(self, request: QuoteRequest, /) -> Quote:
        return await self.predictor.quote(request)


@bentoml.service(name="EtaOrder", workers=1, traffic=TRAFFIC, logging=LOGGING, envs=ENVS, tracing=TRACING,
                  metrics=METRICS)
class EtaOrder(_Serving):
    quotes = bentoml.depends(EtaQuote)

    @bentoml.api(route="/eta/order")
    async def order(self, order: Order, /) -> Eta:
        return await self.predictor.order(order)

    @bentoml.api(route="/eta/quote")
    async def quote(self, request: QuoteRequest, /) -> Quote:
        """Forwarded to the EtaQuote service, which scales on its own."""
        return Quote.model_validate(await self.quotes.to_async.quote(request.model_dump()))


if settings.serving.api_key:
    # BentoML's client for a dependency sends this variable as its bearer token, so quotes EtaOrder
    # forwards pass EtaQuote's guard.
    os.environ.setdefault("BENTO_CLOUD_API_KEY", settings.serving.api_key.get_secret_value())
for service in (EtaQuote, EtaOrder):
    service.add_asgi_middleware(LatencyMetrics, paths=("/eta/order", "/eta/quote"))
    service.add_asgi_middleware(Guard, config=settings.serving)
