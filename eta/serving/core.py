"""The prediction core both HTTP services run: features from Feast's Redis, caches, degraded mode, model.

Framework-free so the Bento services and the plain-FastAPI reference do exactly the same work.
Every answer is built by `model_inputs`, the function training uses. When Redis is slow or gone the
core answers within the time budget from the last values it knew (or none: LightGBM routes missing
features as it learned from stores without history), marks the answer degraded, and tries Redis
again `redis_retry_after_s` later, so it recovers by itself. Every order answer (and a sample of quote
answers) is recorded in the prediction log (`eta.serving.prediction_log`) before it is returned.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from eta.features.definitions import MARKET_STATE_FEATURES, REQUEST_FIELDS, STORE_HISTORY_FEATURES, model_inputs
from eta.features.online import MARKET_STATE, STORE_HISTORY, VIEWS, FeatureKey, FeatureVector, OnlineFeatureReader
from eta.model.training import EtaModel
from eta.orders.schema import request_order_id
from eta.serving.api import Eta, Order, Quote, QuoteRequest
from eta.serving.cache import CoalescingCache, ExpiringDict, SharedCache
from eta.serving.prediction_log import DEPENDENCY_ERRORS, PredictionLog, new_prediction_id
from eta.settings import ServingSettings, Settings

# A quote is shown before any basket exists: it prices the model's typical order (training medians).
QUOTE_DEFAULTED_FIELDS = [f for f in REQUEST_FIELDS if f not in ("created_at", "market_id",
                                                                 "estimated_store_to_consumer_driving_duration")]
# One slow read may be this worker's own stall at a burst, not Redis; timeouts in a row mean Redis is slow.
TIMEOUTS_BEFORE_PAUSE = 3
logger = logging.getLogger(__name__)


class Telemetry:
    """What the core reports (nothing, as such); `eta.serving.telemetry.PrometheusTelemetry` exports it."""

    def count(self, event: str, n: int = 1) -> None:
        """`event` is "<what>:<detail>": features:hit, quotes_l2:miss, degraded:order, redis_error:<type>."""

    def feature_age(self, view: str, seconds: float) -> None:
        """Age of a feature vector just read from the online store."""


def redis_client(url: str, redis_type: str = "redis") -> aioredis.Redis | aioredis.RedisCluster:
    """One pool per worker, opened once; short socket timeouts so a dead Redis fails fast.

    TLS (`rediss://`) and the password come from the URL; a cluster pipelines per node.
    """
    # One immediate retry: after Redis restarts, a pooled connection is dead and the retry reconnects at
    # once. redis-py's default retries three times after random sleeps of up to 2, 4 and 8 s: a request's
    # read is cut off by its 8 ms budget anyway, but background L2 writes held connections that long.
    options = {"socket_connect_timeout": 0.05, "socket_timeout": 0.25, "max_connections": 64,
               "retry": Retry(NoBackoff(), retries=1)}
    if redis_type == "redis_cluster":
        return aioredis.RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)


def _feature_cache(config: ServingSettings) -> CoalescingCache[FeatureKey, FeatureVector]:
    """Per-view TTLs: store history may be a minute old, market state only a second."""
    ttl = {STORE_HISTORY.name: config.store_features_ttl_s, MARKET_STATE.name: config.market_features_ttl_s}
    return CoalescingCache(ExpiringDict(config.l1_max_entries, lambda key: ttl[key[0]]))


class Predictor:
    def __init__(self, model: EtaModel, model_version: str, settings: Settings, client: aioredis.Redis,
                 telemetry: Telemetry | None = None) -> None:
        self.model = model
        self.model_version = model_version
        self.config = settings.serving
        self.reader = OnlineFeatureReader(client, settings.feast_project)
        self.features = _feature_cache(self.config)
        # A degraded answer is never cached: once Redis is back, the next request gets a fresh one.
        self.quotes: CoalescingCache[str, tuple[float, float, float, bool]] = CoalescingCache(
            ExpiringDict(self.config.l1_max_entries, self.config.quote_ttl_s), cacheable=lambda answer: not answer[3]
        )
        self.shared = SharedCache(client, f"eta:quote:{settings.feast_project}", self.config.quote_ttl_s)
        self.telemetry = telemetry or Telemetry()
        self.count = self.telemetry.count
        self.log = PredictionLog(client, settings, self.count) if settings.prediction_log.enabled else None
        self.quote_sample_rate = settings.prediction_log.quote_sample_rate
        self._retry_at = 0.0
        self._timeouts_in_a_row = 0
        self._paused_since: float | None = None
        self._background: set[asyncio.Task] = set()

    @property
    def redis_healthy(self) -> bool:
        return time.monotonic() >= self._retry_at

    def _failed(self, error: BaseException) -> None:
        """Stop asking Redis for a while once it is gone, or slow several times in a row.

        One timeout alone may be this worker's own queue at a burst, not Redis: that request is
        answered degraded, the next ones still try.
        """
        self.count(f"redis_error:{type(error).__name__}", 1)
        self._timeouts_in_a_row = self._timeouts_in_a_row + 1 if isinstance(error, TimeoutError) else 0
        if not isinstance(error, TimeoutError) or self._timeouts_in_a_row >= TIMEOUTS_BEFORE_PAUSE:
            self._retry_at = time.monotonic() + self.config.redis_retry_after_s
            if self._paused_since is None:  # logged on the way down and up only: never a line per request
                self._paused_since = time.monotonic()
                logger.warning("redis unavailable: answering degraded", extra={
                    "error": type(error).__name__, "detail": str(error)[:200],
                    "retry_after_s": self.config.redis_retry_after_s})

    def _succeeded(self) -> None:
        self._timeouts_in_a_row = 0
        if self._paused_since is not None:
            logger.info("redis back: answering fresh",
                        extra={"unavailable_s": round(time.monotonic() - self._paused_since, 3)})
            self._paused_since = None

    async def _bounded(self, work):
        async with asyncio.timeout(self.config.feature_timeout_ms / 1000):
            return await work

    async def vectors(self, wanted: Sequence[FeatureKey]) -> tuple[list[FeatureVector], bool]:
        """Feature vectors for (view, id) pairs and whether they are degraded (stale or missing by failure)."""
        before = (self.features.hits, self.features.misses)
        if self.redis_healthy:
            try:
                found = await self._bounded(self.features.get_many(wanted, self._read))
                self._succeeded()
                self._count_cache("features", before, self.features)
                return found, False
            except DEPENDENCY_ERRORS as error:
                self._failed(error)
        return [self._last_known(key) for key in wanted], True

    async def _read(self, wanted: list[FeatureKey]) -> list[FeatureVector]:
        vectors = await self.reader.read(wanted)
        now = time.time()
        for (view, _), vector in zip(wanted, vectors):
            if vector.event_time is not None:
                self.telemetry.feature_age(view, now - vector.event_time)
        return vectors

    def _last_known(self, key: FeatureKey) -> FeatureVector:
        return self.features.stale.get(key) or FeatureVector(tuple(math.nan for _ in VIEWS[key[0]].features), None)

    def _count_cache(self, cache: str, before: tuple[int, int], now: CoalescingCache) -> None:
        self.count(f"{cache}:hit", now.hits - before[0])
        self.count(f"{cache}:miss", now.misses - before[1])

    async def order(self, order: Order, record: bool = True) -> Eta:
        """The ETA of a placed order, recorded in the prediction log unless `record` is False (warm-up)."""
        (store, market), degraded = await self.vectors(
            [(STORE_HISTORY.name, order.store_id), (MARKET_STATE.name, order.market_id)]
        )
        row = order.model_dump()
        row["created_at"] = row["created_at"] or datetime.now(timezone.utc)
        order_id = row.pop("order_id") or request_order_id(row)
        columns = {name: [value] for name, value in row.items()}
        columns.update(zip(STORE_HISTORY_FEATURES, ([v] for v in store.values)))
        columns.update(zip(MARKET_STATE_FEATURES, ([v] for v in market.values)))
        point, lower, upper = self.model.predict(model_inputs(columns), threads=1)
        if degraded:
            self.count("degraded:order", 1)
        eta = Eta(
            prediction_id=new_prediction_id(),
            order_id=order_id,
            minutes=round(float(point[0]), 2),
            range_min=(round(float(lower[0]), 1), round(float(upper[0]), 1)),
            model_version=self.model_version,
            degraded=degraded,
            store_features_found=store.found,
            market_features_found=market.found,
        )
        if record and self.log is not None:
            self.log.write(_order_record(eta, row, store, market))
        return eta

    def quote_keys(self, request: QuoteRequest) -> tuple[float, list[str]]:
        """The time the quote is computed for (its bucket's start) and one cache key per store.

        A key holds everything the answer depends on but the features: model, bucket, market, store
        and the rounded drive. The features' own TTLs bound their age.
        """
        shown_at = (request.created_at or datetime.now(timezone.utc)).timestamp()
        bucket = int(shown_at // self.config.quote_bucket_s)
        prefix = f"{self.model_version}:{bucket}:{request.market_id}:"
        keys = [f"{prefix}{store.store_id}:{self._drive(store.estimated_store_to_consumer_driving_duration)}"
                for store in request.stores]
        return float(bucket * self.config.quote_bucket_s), keys

    def _drive(self, seconds: float) -> int:
        step = self.config.quote_drive_step_s
        return int(round(seconds / step) * step)

    async def quote(self, request: QuoteRequest, record: bool = True) -> Quote:
        at, keys = self.quote_keys(request)
        before = (self.quotes.hits, self.quotes.misses)
        by_key = dict(zip(keys, request.stores))
        answers = await self.quotes.get_many(
            keys, lambda missing: self._quote_misses(at, request.market_id, [by_key[k] for k in missing], missing)
        )
        self._count_cache("quotes_l1", before, self.quotes)
        degraded = any(answer[3] for answer in answers)
        if degraded:
            self.count("degraded:quote", 1)
        # Validated from plain dicts in one go (Rust): half the cost of constructing 50 models in Python.
        etas = [{"store_id": store.store_id, "minutes": point, "range_min": (low, high), "degraded": flag}
                for store, (point, low, high, flag) in zip(request.stores, answers)]
        if record and self.log is not None and random.random() < self.quote_sample_rate:
            self.log.write(_quote_record(self.model_version, at, request, answers, degraded))
        return Quote.model_validate({"model_version": self.model_version, "etas": etas, "degraded": degraded})

    async def _quote_misses(self, at: float, market_id: int, stores: list, keys: list[str]):
        """L1 misses: answers from L2 where it has them, computed (and written to L2) for the rest."""
        shared: list[bytes | None] = [None] * len(keys)
        if self.redis_healthy:
            try:
                shared = await self._bounded(self.shared.get_many(keys))
            except DEPENDENCY_ERRORS as error:
                self._failed(error)
        answers = [_decode(value) for value in shared]
        todo = [i for i, answer in enumerate(answers) if answer is None]
        self.count("quotes_l2:hit", len(keys) - len(todo))
        self.count("quotes_l2:miss", len(todo))
        if todo:
            computed = await self._compute_quotes(at, market_id, [stores[i] for i in todo])
            for i, answer in zip(todo, computed):
                answers[i] = answer
            fresh = {keys[i]: _encode(answers[i]) for i in todo if not answers[i][3]}
            if fresh and self.redis_healthy:
                self._in_background(self.shared.set_many(fresh))
        return answers

    async def _compute_quotes(self, at: float, market_id: int, stores: list) -> list[tuple[float, float, float, bool]]:
        wanted = [(STORE_HISTORY.name, s.store_id) for s in stores] + [(MARKET_STATE.name, market_id)]
        vectors, degraded = await self.vectors(wanted)
        *store_vectors, market = vectors
        n = len(stores)
        columns: dict[str, object] = {name: np.full(n, self.model.typical_order.get(name, math.nan))
                                      for name in QUOTE_DEFAULTED_FIELDS}
        columns["created_at"] = np.full(n, np.datetime64(int(at), "s"))
        columns["market_id"] = np.full(n, float(market_id))
        columns["estimated_store_to_consumer_driving_duration"] = np.array(
            [self._drive(s.estimated_store_to_consumer_driving_duration) for s in stores], dtype=float
        )
        history = np.array([v.values for v in store_vectors], dtype=float).reshape(n, len(STORE_HISTORY_FEATURES))
        columns.update({name: history[:, i] for i, name in enumerate(STORE_HISTORY_FEATURES)})
        columns.update({name: np.full(n, value) for name, value in zip(MARKET_STATE_FEATURES, market.values)})
        point, lower, upper = self.model.predict(model_inputs(columns), threads=1)
        return [(round(float(p), 1), round(float(lo), 1), round(float(hi), 1), degraded)
                for p, lo, hi in zip(point, lower, upper)]

    async def drain(self) -> None:
        """Wait for the L2 writes on their way and ship what the log holds (before a shutdown closes the pool)."""
        await asyncio.gather(*self._background)
        if self.log is not None:
            await self.log.drain()

    def _in_background(self, work) -> None:
        task = asyncio.create_task(self._quietly(work))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _quietly(self, work) -> None:
        try:
            await work
        except DEPENDENCY_ERRORS as error:
            self._failed(error)


def _age(vector: FeatureVector, now: float) -> float | None:
    return None if vector.event_time is None else round(now - vector.event_time, 3)


def _order_record(eta: Eta, row: dict, store: FeatureVector, market: FeatureVector) -> dict[str, object]:
    """What the prediction log keeps of an order answer: the request, the features as the model got them
    (with their age when served), and the answer as the customer saw it."""
    now = time.time()
    return {"prediction_id": eta.prediction_id, "kind": "order", "logged_at": now, "order_id": eta.order_id,
            "model_version": eta.model_version, **row,
            **dict(zip(STORE_HISTORY_FEATURES, store.values)), **dict(zip(MARKET_STATE_FEATURES, market.values)),
            "store_history_age_s": _age(store, now), "market_state_age_s": _age(market, now),
            "degraded": eta.degraded, "minutes": eta.minutes, "range_low": eta.range_min[0],
            "range_high": eta.range_min[1]}


def _quote_record(model_version: str, at: float, request: QuoteRequest, answers: list, degraded: bool
                  ) -> dict[str, object]:
    """A quote page as answered: per store its drive estimate, minutes, range and whether it was degraded."""
    return {"prediction_id": new_prediction_id(), "kind": "quote", "logged_at": time.time(),
            "model_version": model_version, "market_id": request.market_id,
            "created_at": datetime.fromtimestamp(at, timezone.utc), "degraded": degraded,
            "stores": [[store.store_id, store.estimated_store_to_consumer_driving_duration, *answer[:3], answer[3]]
                       for store, answer in zip(request.stores, answers)]}


def _encode(answer: tuple[float, float, float, bool]) -> bytes:
    return f"{answer[0]},{answer[1]},{answer[2]}".encode()


def _decode(value: bytes | None) -> tuple[float, float, float, bool] | None:
    if value is None:
        return None
    point, low, high = (float(part) for part in value.split(b","))
    return point, low, high, False
