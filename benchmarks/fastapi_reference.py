"""The plain-FastAPI reference: the same `Predictor` work as the Bento services, with nothing of BentoML.

Served by uvicorn (one worker, uvloop, httptools, no access log) in `make bench-serving`, so the
table shows what BentoML's serving layer costs on top of the same features and model.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from eta.api import Eta, Order, Quote, QuoteRequest
from eta.registry import load_model, production_tag
from eta.serving import Predictor, redis_client
from eta.settings import get_settings

settings = get_settings()
state: dict[str, Predictor] = {}


@asynccontextmanager
async def lifespan(_: FastAPI):
    tag = production_tag(settings)
    client = redis_client(settings.redis_url, settings.redis_type)
    state["predictor"] = Predictor(load_model(tag), tag, settings, client)
    yield
    await state["predictor"].drain()
    await client.aclose()


app = FastAPI(title="eta reference", lifespan=lifespan)


@app.post("/eta/order")
async def order(request: Order) -> Eta:
    return await state["predictor"].order(request)


@app.post("/eta/quote")
async def quote(request: QuoteRequest) -> Quote:
    return await state["predictor"].quote(request)
