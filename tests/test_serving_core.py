"""The serving core against real Redis: Feast parity of the async reads, cache correctness, degraded mode.

Each test's online features live in its own Feast project (`redis_store`); the Redis-loss tests run a
`redis-server` of their own on a free port and kill it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import subprocess
import time
from datetime import datetime, timedelta, timezone

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import redis

from eta.features.definitions import MARKET_STATE_FEATURES, MODEL_FEATURES, STORE_HISTORY_FEATURES
from eta.features.online import MARKET_STATE, STORE_HISTORY, OnlineFeatureReader
from eta.features.store import push_market_state
from eta.model.training import EtaModel
from eta.serving.api import Order, QuoteRequest, QuoteStore
from eta.serving.core import Predictor, Telemetry, redis_client
from flows.processes import free_port
from tests.helpers import start_redis_server


class Recording(Telemetry):
    def __init__(self) -> None:
        self.events: dict[str, int] = {}

    def count(self, event: str, n: int = 1) -> None:
        self.events[event] = self.events.get(event, 0) + n


@pytest.fixture(scope="module")
def model() -> EtaModel:
    """A small real booster over the model's features (the cache and degraded logic do not care how good it is)."""
    rng = np.random.default_rng(0)
    inputs = rng.uniform(0, 50, size=(500, len(MODEL_FEATURES)))
    booster = lgb.train({"objective": "regression", "verbosity": -1, "num_threads": 1},
                        lgb.Dataset(inputs, label=np.log(20 + inputs[:, 0])), num_boost_round=10)
    return EtaModel(booster, -0.2, 0.25, {"order_protocol": 1, "total_items": 3, "subtotal": 2500,
                                          "num_distinct_items": 2, "min_item_price": 500, "max_item_price": 1500,
                                          "estimated_order_place_duration": 250})


def _order(store_id: int, market_id: int) -> Order:
    return Order(store_id=store_id, market_id=market_id, order_protocol=1, total_items=3, subtotal=2500,
                 num_distinct_items=2, min_item_price=500, max_item_price=1500, estimated_order_place_duration=250,
                 estimated_store_to_consumer_driving_duration=600)


def _quote(market_id: int, store_ids: list[int], at: datetime | None = None) -> QuoteRequest:
    return QuoteRequest(market_id=market_id, created_at=at, stores=[
        QuoteStore(store_id=s, estimated_store_to_consumer_driving_duration=600 + 7 * s) for s in store_ids])


def _run(coroutine):
    return asyncio.run(coroutine)


async def _with_predictor(model, settings, work, version="m:1", telemetry=None, url=None):
    client = redis_client(url or settings.redis_url)
    predictor = Predictor(model, version, settings, client, telemetry)
    try:
        return await work(predictor)
    finally:
        await predictor.drain()
        await client.aclose()


def test_async_reads_return_exactly_what_feast_returns(redis_store):
    settings, store, orders = redis_store
    stores = [int(s) for s in orders["store_id"].unique()[:5]] + [999_999]
    markets = [int(m) for m in orders["market_id"].unique()] + [77]
    online = store.get_online_features(
        features=store.get_feature_service(settings.feature_service),
        entity_rows=[{"store_id": s, "market_id": m} for s, m in zip(stores, markets * len(stores))],
    ).to_dict()

    async def read():
        client = redis_client(settings.redis_url)
        reader = OnlineFeatureReader(client, settings.feast_project)
        wanted = [(STORE_HISTORY.name, s) for s in stores] + [(MARKET_STATE.name, m) for m in (markets * len(stores))[:len(stores)]]
        try:
            return await reader.read(wanted)
        finally:
            await client.aclose()

    vectors = _run(read())
    for i in range(len(stores)):
        for view_vectors, names, offset in ((vectors, STORE_HISTORY_FEATURES, 0), (vectors, MARKET_STATE_FEATURES, len(stores))):
            vector = view_vectors[offset + i]
            expected = [online[name][i] for name in names]
            assert vector.found == (expected[0] is not None)
            assert [None if math.isnan(v) else v for v in vector.values] == expected
    assert not vectors[len(stores) - 1].found, "an unknown store has no features"


def test_quote_keys_carry_model_version_and_time_bucket(model, settings):
    config = settings.model_copy(update={"serving": settings.serving.model_copy(update={"quote_bucket_s": 300})})
    start = datetime(2026, 10, 1, 12, 0, tzinfo=timezone.utc)

    async def keys(version, at):
        return await _with_predictor(model, config, lambda p: _async(p.quote_keys(_quote(1, [3, 4], at))), version)

    at, same_bucket = _run(keys("m:1", start + timedelta(seconds=10)))
    assert at == start.timestamp()
    assert _run(keys("m:1", start + timedelta(seconds=299)))[1] == same_bucket
    assert not set(_run(keys("m:1", start + timedelta(seconds=300)))[1]) & set(same_bucket), "a new bucket misses"
    assert not set(_run(keys("m:2", start + timedelta(seconds=10)))[1]) & set(same_bucket), "a new model misses"


async def _async(value):
    return value


def test_a_cached_quote_is_the_answer_a_fresh_computation_gives(model, redis_store):
    settings, _, orders = redis_store
    stores = [int(s) for s in orders["store_id"].unique()[:6]]
    market = int(orders["market_id"].iloc[0])
    version = f"m:{time.time_ns()}"  # a version of its own: nothing in L2 yet
    request = _quote(market, stores, datetime.now(timezone.utc))

    first_seen, second_seen, other_seen = Recording(), Recording(), Recording()
    computed = _run(_with_predictor(model, settings, lambda p: p.quote(request), version, first_seen))
    again_l1 = _run(_with_predictor(model, settings, lambda p: _twice(p, request), version, Recording()))
    from_l2 = _run(_with_predictor(model, settings, lambda p: p.quote(request), version, second_seen))
    other_model = _run(_with_predictor(model, settings, lambda p: p.quote(request), version + "b", other_seen))

    assert first_seen.events["quotes_l2:miss"] == len(stores)
    assert second_seen.events.get("quotes_l2:hit") == len(stores), "a second replica reads L2"
    assert again_l1.etas == computed.etas and from_l2.etas == computed.etas
    assert other_seen.events["quotes_l2:miss"] == len(stores), "another model never reads this model's answers"
    assert other_model.model_version != computed.model_version
    assert not computed.degraded and all(not eta.degraded for eta in computed.etas)
    _cleanup_quotes(settings)


async def _twice(predictor, request):
    await predictor.quote(request)
    before = predictor.quotes.hits
    answer = await predictor.quote(request)
    assert predictor.quotes.hits - before == len(request.stores), "the second page comes from L1"
    return answer


def _cleanup_quotes(settings) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    keys = list(client.scan_iter(f"eta:quote:{settings.feast_project}:*"))
    if keys:
        client.delete(*keys)


def test_market_state_is_cached_no_longer_than_its_ttl(model, redis_store):
    settings, store, orders = redis_store
    ttl = 1.0
    config = settings.model_copy(update={"serving": settings.serving.model_copy(update={"market_features_ttl_s": ttl})})
    market = int(orders["market_id"].iloc[0])
    newer = orders["created_at"].max()

    async def work(predictor):
        clock = [time.monotonic()]
        predictor.features.fresh.timer = lambda: clock[0]  # the test moves time: a slow push cannot outlast the TTL
        (before,), _ = await predictor.vectors([(MARKET_STATE.name, market)])
        push_market_state(store, orders.tail(1).assign(market_id=market, total_onshift_dashers=501.0,
                                                        created_at=newer + pd.Timedelta(minutes=1)))
        clock[0] += ttl * 0.9
        (cached,), _ = await predictor.vectors([(MARKET_STATE.name, market)])
        clock[0] += ttl * 0.2
        (fresh,), _ = await predictor.vectors([(MARKET_STATE.name, market)])
        return before, cached, fresh

    before, cached, fresh = _run(_with_predictor(model, config, work))
    assert cached.values == before.values, "within the TTL the cached vector is served"
    assert fresh.values[0] == 501.0, "after the TTL the pushed value is"


def test_concurrent_misses_of_one_key_read_redis_once(model, redis_store):
    settings, _, orders = redis_store
    store_id, market = int(orders["store_id"].iloc[0]), int(orders["market_id"].iloc[0])

    async def work(predictor):
        reads = []
        real_read = predictor.reader.read

        async def counted(wanted):
            reads.append(list(wanted))
            await arrived.wait()  # a slow Redis: every request arrives while the first read is on its way
            return await real_read(wanted)

        arrived = asyncio.Event()
        predictor.reader.read = counted
        requests = [asyncio.create_task(predictor.order(_order(store_id, market))) for _ in range(50)]
        await asyncio.sleep(0)  # each request runs up to its wait for the features
        arrived.set()
        return reads, await asyncio.gather(*requests)

    assert settings.serving.feature_timeout_ms >= 500, "a budget no stalled machine overruns (tests/conftest.py)"
    reads, answers = _run(_with_predictor(model, settings, work))
    assert len(reads) == 1 and len(reads[0]) == 2
    assert len({a.minutes for a in answers}) == 1 and all(a.store_features_found for a in answers)


@pytest.fixture
def own_redis():
    """A redis-server of this test's own, so it can be killed and started again on the same port."""
    port = free_port()

    def start() -> subprocess.Popen:
        return start_redis_server(port, "--appendonly", "no")

    server = {"process": start(), "start": start}
    yield port, server
    server["process"].kill()
    server["process"].wait()


def _copy_online_rows(settings, port: int, keys: list[bytes]) -> None:
    source, target = redis.Redis.from_url(settings.redis_url), redis.Redis(port=port)
    for key in keys:
        target.restore(key, 0, source.dump(key), replace=True)


def test_without_redis_answers_come_fast_degraded_from_last_known_values_and_recover(model, redis_store, own_redis,
                                                                                      caplog):
    settings, _, orders = redis_store
    port, server = own_redis
    store_id, market = int(orders["store_id"].iloc[0]), int(orders["market_id"].iloc[0])
    from eta.features.online import entity_key

    rows = [entity_key(settings.feast_project, STORE_HISTORY, store_id), entity_key(settings.feast_project, MARKET_STATE, market)]
    _copy_online_rows(settings, port, rows)
    config = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0", "serving": settings.serving.model_copy(
        update={"redis_retry_after_s": 0.2, "market_features_ttl_s": 0.05, "store_features_ttl_s": 0.05})})
    seen = Recording()

    async def work(predictor):
        healthy = await predictor.order(_order(store_id, market))
        server["process"].kill()
        server["process"].wait()
        await asyncio.sleep(0.1)  # both TTLs pass: the next answers must go to Redis
        answers, began = [], time.monotonic()
        for _ in range(20):
            answers.append(await predictor.order(_order(store_id, market)))
            answers.append(await predictor.quote(_quote(market, [store_id, store_id + 1])))
        pauses = (time.monotonic() - began) / config.serving.redis_retry_after_s
        server["process"] = server["start"]()
        _copy_online_rows(settings, port, rows)  # a managed Redis comes back with its data
        await asyncio.sleep(0.25)  # past redis_retry_after_s
        return healthy, answers, pauses, await predictor.order(_order(store_id, market))

    with caplog.at_level(logging.INFO, logger="eta.serving.core"):
        healthy, answers, pauses, recovered = _run(_with_predictor(model, config, work, telemetry=seen,
                                                                  url=config.redis_url))
    assert not healthy.degraded and healthy.store_features_found
    assert all(answer.degraded for answer in answers)
    orders_answered = answers[::2]
    assert all(a.minutes == healthy.minutes for a in orders_answered), "last known features give the same answer"
    # Speed without Redis is measured by `make bench-faults`; here: a dead Redis is asked once per pause,
    # not once per answer (40 answers).
    asked = sum(n for event, n in seen.events.items() if event.startswith("redis_error:"))
    assert 1 <= asked <= 1 + math.ceil(pauses), (asked, pauses)
    assert seen.events["degraded:order"] == 20 and seen.events["degraded:quote"] == 20
    assert not recovered.degraded and recovered.store_features_found and recovered.minutes == healthy.minutes
    # 40 degraded answers, two log lines: the way down (with the error) and the way back up.
    down, up = [r for r in caplog.records if r.name == "eta.serving.core"]
    assert down.levelname == "WARNING" and down.error == "ConnectionError" and "degraded" in down.getMessage()
    assert up.levelname == "INFO" and up.unavailable_s > 0.2


def test_eta_logs_are_one_json_object_per_line_with_their_extra_fields(capsys):
    from eta.serving.telemetry import json_logs

    eta_logger = logging.getLogger("eta")
    before = (eta_logger.handlers[:], eta_logger.level, eta_logger.propagate)
    try:
        json_logs()
        logging.getLogger("eta.serving.core").warning("redis unavailable",
                                                 extra={"error": "ConnectionError", "retry_after_s": 0.5})
    finally:
        eta_logger.handlers[:], eta_logger.level, eta_logger.propagate = before
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert record["level"] == "WARNING" and record["logger"] == "eta.serving.core" and record["message"] == "redis unavailable"
    assert record["error"] == "ConnectionError" and record["retry_after_s"] == 0.5 and "time" in record


def test_a_waiter_whose_loader_gives_up_gets_a_timeout_not_a_cancellation():
    from eta.serving.cache import CoalescingCache, ExpiringDict

    cache: CoalescingCache[str, int] = CoalescingCache(ExpiringDict(100, 60))

    async def slow(keys):
        await asyncio.Event().wait()  # a load that never ends by itself
        return [1 for _ in keys]

    async def scenario():
        loader = asyncio.create_task(cache.get_many(["k"], slow))
        await asyncio.sleep(0)  # the loader starts its load
        waiter = asyncio.create_task(cache.get_many(["k"], slow))
        await asyncio.sleep(0)  # the waiter waits for it
        assert cache.loads == 1, "the waiter shares the load instead of starting its own"
        loader.cancel()
        with pytest.raises(TimeoutError):
            await waiter
        assert await cache.get_many(["k"], _ones) == [1], "the next request loads again"

    _run(scenario())


async def _ones(keys):
    return [1 for _ in keys]


def test_one_slow_read_degrades_one_answer_and_three_in_a_row_pause_redis(model, redis_store):
    settings, _, orders = redis_store
    store_id, market = int(orders["store_id"].iloc[0]), int(orders["market_id"].iloc[0])
    # A budget the healthy reads keep however slow this machine is, and reads that stall far past it.
    config = settings.model_copy(update={"serving": settings.serving.model_copy(
        update={"feature_timeout_ms": 300, "redis_retry_after_s": 60,
                "market_features_ttl_s": 0.001, "store_features_ttl_s": 0.001})})

    async def work(predictor):
        real_read, stalls, asked = predictor.reader.read, [], []

        async def sometimes_stalled(wanted):
            asked.append(True)
            if stalls.pop(0):
                await asyncio.Event().wait()
            return await real_read(wanted)

        predictor.reader.read = sometimes_stalled
        answers = []
        for stalled in (True, False, True, True, True, False):
            stalls[:] = [stalled]
            await asyncio.sleep(0.002)  # past the L1 TTLs
            answers.append(await predictor.order(_order(store_id, market)))
        return [a.degraded for a in answers], len(asked), predictor.redis_healthy

    degraded, asked, healthy = _run(_with_predictor(model, config, work))
    assert degraded == [True, False, True, True, True, True]
    assert asked == 5, "after three timeouts in a row the last one is answered degraded without asking"
    assert not healthy


def test_the_l1_cache_expires_entries_bounds_its_size_and_is_invisible_to_the_collector():
    import gc

    from eta.serving.cache import ExpiringDict

    now = [0.0]
    cache: ExpiringDict[str, tuple] = ExpiringDict(3, lambda key: 10 if key.startswith("s") else 1, timer=lambda: now[0])
    cache["s1"], cache["m1"] = (1.0, 2.0), (3.0, None)
    now[0] = 1.0
    assert cache.get("m1") is None and cache.get("s1") == (1.0, 2.0), "each key's own TTL"
    cache["s2"], cache["s3"], cache["s4"] = (1.0,), (2.0,), (3.0,)
    assert len(cache) == 3 and cache.get("s1") is None, "full: the oldest entry goes"
    gc.collect()
    assert not any(gc.is_tracked(entry) for shard in cache._shards for entry in shard.values())


def test_a_big_l1_stays_within_its_bound_keeping_the_newest_entries():
    from eta.serving.cache import SHARD_ENTRIES, ExpiringDict

    cache: ExpiringDict[str, tuple] = ExpiringDict(10 * SHARD_ENTRIES, 60)
    keys = [f"q:{i}" for i in range(30 * SHARD_ENTRIES)]
    for key in keys:
        cache[key] = (1.0,)
    assert len(cache) <= cache.maxsize and len(cache) >= cache.maxsize - SHARD_ENTRIES, "full, within its bound"
    assert all(cache.get(key) == (1.0,) for key in keys[-SHARD_ENTRIES:]), "the newest entries stay"
    assert all(cache.get(key) is None for key in keys[:10 * SHARD_ENTRIES]), "the oldest went first"
