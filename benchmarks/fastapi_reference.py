"""The plain-FastAPI reference: the same work as the Bento services, with nothing of BentoML.

Same `Predictor`, same guard (API key, body bounds), same telemetry (cache and degraded counters,
feature age, event-loop lag, model age), the same latency histogram per endpoint and /metrics
(`eta.serving.telemetry.LatencyMetrics`), the same JSON logs, the same `gc.freeze()` after start-up. Served by
uvicorn (one worker, uvloop, httptools, no access log) in `make bench-serving`, so the table shows what BentoML's
serving layer costs on top of the same work.
"""

from __future__ import annotations

import asyncio
import gc
from contextlib import asynccontextmanager

import bentoml
from fastapi import FastAPI

from eta.model.registry import load_model, production_tag
from eta.monitoring.drift_status import drift_status_path
from eta.serving.api import Eta, Order, Quote, QuoteRequest
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
state: dict[str, Predictor] = {}


@asynccontextmanager
async def lifespan(_: FastAPI):
    tag = production_tag(settings)
    client = redis_client(settings.redis_url, settings.redis_type)
    telemetry = PrometheusTelemetry()
    state["predictor"] = Predictor(load_model(tag), tag, settings, client, telemetry)
    flushing = asyncio.create_task(telemetry.flush_every(1.0))
    lag_sampling = asyncio.create_task(sample_event_loop_lag("fastapi_reference"))
    export_served_model(tag, bentoml.models.get(tag).info.creation_time, drift_status_path(settings))
    # As the Bento does after its start-up: without it every gen-2 collection walks the ~280k objects of the
    # imports and the model (160-190 ms of CPU each, measured), which the Bento never pays.
    gc.collect()
    gc.freeze()
    yield
    flushing.cancel()
    lag_sampling.cancel()
    await state["predictor"].drain()
    await client.aclose()


app = FastAPI(title="eta reference", lifespan=lifespan)
# Added last, runs first: latency includes the guard, as in the Bento.
app.add_middleware(Guard, config=settings.serving)
app.add_middleware(LatencyMetrics, paths=("/eta/order", "/eta/quote"))


@app.post("/eta/order")
async def order(request: Order) -> Eta:
    return await state["predictor"].order(request)


@app.post("/eta/quote")
async def quote(request: QuoteRequest) -> Quote:
    return await state["predictor"].quote(request)
