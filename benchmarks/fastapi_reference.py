"""The plain-FastAPI reference: the same work as the Bento services, with nothing of BentoML.

Same `Predictor`, same telemetry (cache and degraded counters, feature age) and, as BentoML's
middleware does, a latency histogram per endpoint, exposed at /metrics. Served by uvicorn (one worker,
uvloop, httptools, no access log) in `make bench-serving`, so the table shows what BentoML's serving
layer costs on top of the same features, model and metrics.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

import asyncio

from fastapi import FastAPI
from prometheus_client import make_asgi_app

from eta.api import Eta, Order, Quote, QuoteRequest
from eta.registry import load_model, production_tag
from eta.serving import Predictor, redis_client
from eta.settings import get_settings
from eta.telemetry import LatencyMetrics, PrometheusTelemetry

settings = get_settings()
state: dict[str, Predictor] = {}


@asynccontextmanager
async def lifespan(_: FastAPI):
    tag = production_tag(settings)
    client = redis_client(settings.redis_url, settings.redis_type)
    telemetry = PrometheusTelemetry()
    state["predictor"] = Predictor(load_model(tag), tag, settings, client, telemetry)
    flushing = asyncio.create_task(telemetry.flush_every(1.0))
    yield
    flushing.cancel()
    await state["predictor"].drain()
    await client.aclose()


app = FastAPI(title="eta reference", lifespan=lifespan)
app.add_middleware(LatencyMetrics, paths=("/eta/order", "/eta/quote"))
app.mount("/metrics", make_asgi_app())


@app.post("/eta/order")
async def order(request: Order) -> Eta:
    return await state["predictor"].order(request)


@app.post("/eta/quote")
async def quote(request: QuoteRequest) -> Quote:
    return await state["predictor"].quote(request)
