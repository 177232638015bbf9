"""The prediction log end to end: in the worker's spool before the answer leaves, shipped to the stream behind
it (once Redis is back when it was down or stalled), landed through the real Prefect server idempotently,
joined with orders ingested later, and one answer of the real `bentoml serve` found in the landed log.

Each test's stream is its Feast project's (`redis_store`: db 14, dropped afterwards); the Redis-loss tests
run a `redis-server` of their own (with an fsync'd append-only file, as a managed Redis keeps what it
acknowledged) that they kill or stop (SIGSTOP: a Redis that truly stalls).
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import time
from datetime import date

import httpx
import numpy as np
import pandas as pd
import pytest
import redis

from eta.features.definitions import (
    MARKET_STATE_FEATURES,
    MODEL_FEATURES,
    ORDER_REQUEST_FIELDS,
    STORE_HISTORY_FEATURES,
    model_inputs,
)
from eta.features.online import MARKET_STATE, STORE_HISTORY, OnlineFeatureReader
from eta.orders.ingest import ingest_batch, read_history
from eta.orders.schema import delivery_minutes, load_orders_file, validate_orders
from eta.orders.simulate import simulate_orders
from eta.serving.api import Order, QuoteRequest, QuoteStore
from eta.serving.core import Predictor, redis_client
from eta.serving.prediction_log import (
    FIELD,
    ROTATE_BYTES,
    SHIP_BYTES,
    PredictionLog,
    decode,
    encode,
    spool_dir,
    stream_key,
)
from eta.settings import SimulationSettings, get_settings
from flows.processes import free_port
from tests.helpers import start_redis_server
from tests.test_serving_core import model  # noqa: F401 - the small real booster fixture


def _order(row: pd.Series, **extra) -> Order:
    return Order(**{field: getattr(row[field], "item", lambda: row[field])() for field in ORDER_REQUEST_FIELDS},
                 created_at=row["created_at"].to_pydatetime(), **extra)


def _records(settings) -> dict[str, dict]:
    client = redis.Redis.from_url(settings.redis_url)
    return {record["prediction_id"]: record
            for record in (decode(fields[FIELD]) for _, fields in client.xrange(stream_key(settings.feast_project)))}


async def _with_predictor(model, settings, work, url=None):
    client = redis_client(url or settings.redis_url)
    predictor = Predictor(model, "m:1", settings, client)
    try:
        return await work(predictor)
    finally:
        await predictor.drain()
        await client.aclose()


def _nan_as_none(values) -> list:
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


def test_every_order_answer_is_recorded_with_the_features_and_answer_the_model_gave(model, redis_store):
    settings, _, orders = redis_store
    rows = orders.tail(12)
    requests = [_order(row, order_id=f"app-{i}") if i % 3 == 0 else _order(row) for i, (_, row) in
                enumerate(rows.iterrows())]

    async def work(predictor):
        answers = [await predictor.order(request) for request in requests]
        reader = OnlineFeatureReader(predictor.reader.client, settings.feast_project)
        online = await reader.read([key for r in requests for key in ((STORE_HISTORY.name, r.store_id),
                                                                       (MARKET_STATE.name, r.market_id))])
        return answers, online

    answers, online = asyncio.run(_with_predictor(model, settings, work))
    records = _records(settings)
    assert set(records) == {a.prediction_id for a in answers}, "every answer, and only answers, recorded"
    ingested_ids = validate_orders(rows, settings.validation).accepted["order_id"].tolist()
    for i, (request, answer) in enumerate(zip(requests, answers)):
        record = records[answer.prediction_id]
        expected_id = f"app-{i}" if i % 3 == 0 else ingested_ids[i]
        assert answer.order_id == record["order_id"] == expected_id, "derived as ingestion derives it"
        assert record["kind"] == "order" and record["model_version"] == "m:1" and not record["degraded"]
        for field in ORDER_REQUEST_FIELDS:
            assert record[field] == getattr(request, field), field
        store, market = online[2 * i], online[2 * i + 1]
        assert [record[f] for f in STORE_HISTORY_FEATURES] == _nan_as_none(store.values)
        assert [record[f] for f in MARKET_STATE_FEATURES] == _nan_as_none(market.values)
        assert record["store_history_age_s"] == pytest.approx(record["logged_at"] - store.event_time, abs=0.01)
        assert record["market_state_age_s"] == pytest.approx(record["logged_at"] - market.event_time, abs=0.01)
        # The model on the recorded inputs gives the recorded answer: they are the inputs it used.
        columns = {name: [np.nan if record[name] is None else record[name]] for name in
                   [*ORDER_REQUEST_FIELDS, *STORE_HISTORY_FEATURES, *MARKET_STATE_FEATURES]}
        columns["created_at"] = [pd.Timestamp(record["created_at"])]
        point, low, high = model.predict(model_inputs(columns), threads=1)
        assert record["minutes"] == answer.minutes == round(float(point[0]), 2)
        assert (record["range_low"], record["range_high"]) == answer.range_min == (round(float(low[0]), 1),
                                                                                   round(float(high[0]), 1))


def test_a_request_order_id_outside_its_bounds_is_refused():
    fields = {"store_id": 1, "market_id": 1, "order_protocol": 1, "total_items": 1, "subtotal": 100,
              "num_distinct_items": 1, "min_item_price": 100, "max_item_price": 100,
              "estimated_order_place_duration": 1, "estimated_store_to_consumer_driving_duration": 1}
    assert Order(**fields, order_id="A-1:b_2.c").order_id == "A-1:b_2.c"
    for bad in ("", "a b", "x" * 65, 42):
        with pytest.raises(ValueError, match="order_id"):
            Order(**fields, order_id=bad)


def test_an_orders_file_keeps_its_own_order_ids_and_derives_the_missing_ones(settings):
    orders = simulate_orders(SimulationSettings(markets=1, stores=3, days=1, seed=3)).head(4)
    derived = validate_orders(orders, settings.validation).accepted["order_id"]
    given = validate_orders(orders.assign(order_id=["app-1", None, "app-3", ""]), settings.validation).accepted
    assert given["order_id"].tolist() == ["app-1", derived[1], "app-3", derived[3]]
    refused = validate_orders(orders.assign(order_id=["ok", "not ok", "ok2", "ok3"]), settings.validation)
    assert len(refused.rejected) == 1 and refused.rejected["reason"][0].startswith("order_id:")


def test_quotes_are_recorded_at_the_sampling_rate(model, redis_store):
    settings, _, orders = redis_store
    stores = [int(s) for s in orders["store_id"].unique()[:3]]
    page = QuoteRequest(market_id=int(orders["market_id"].iloc[0]), stores=[
        QuoteStore(store_id=s, estimated_store_to_consumer_driving_duration=600) for s in stores])

    def quotes_at(rate: float) -> list[dict]:
        config = settings.model_copy(update={"prediction_log": settings.prediction_log.model_copy(
            update={"quote_sample_rate": rate})})
        before = set(_records(settings))
        answers = asyncio.run(_with_predictor(model, config, lambda p: asyncio.gather(*[p.quote(page) for _ in range(5)])))
        new = [record for pid, record in _records(settings).items() if pid not in before]
        return answers, new

    answers, every = quotes_at(1.0)
    assert len(every) == 5 and all(record["kind"] == "quote" for record in every)
    assert [store[0] for store in every[0]["stores"]] == stores
    assert [store[2] for store in every[0]["stores"]] == [eta.minutes for eta in answers[0].etas]
    assert quotes_at(0.0)[1] == []


@pytest.fixture
def durable_redis(tmp_path):
    """A redis-server of this test's own that fsyncs every write (a managed Redis keeps what it acknowledged)."""
    port = free_port()

    def start() -> subprocess.Popen:
        return start_redis_server(port, "--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))

    server = {"process": start(), "start": start}
    yield port, server
    server["process"].send_signal(signal.SIGCONT)
    server["process"].kill()
    server["process"].wait()


def _spool_files(settings) -> list:
    folder = spool_dir(settings)
    return sorted(folder.iterdir()) if folder.exists() else []


async def _until(condition, what: str, seconds: float = 60) -> None:
    """Wait for what the shipper does behind the answers; the deadline only a broken log reaches."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("failure", ["killed", "stalled"])
def test_without_redis_records_wait_in_the_spool_and_are_shipped_when_it_is_back_nothing_lost(model, redis_store,
                                                                                            durable_redis, failure):
    settings, _, orders = redis_store
    port, server = durable_redis
    url = f"redis://127.0.0.1:{port}/0"
    # A feature budget a stalled Redis always overruns (it never answers) and a healthy one keeps on a slow machine.
    config = settings.model_copy(update={
        "redis_url": url, "serving": settings.serving.model_copy(update={"feature_timeout_ms": 300}),
        "prediction_log": settings.prediction_log.model_copy(update={"ship_timeout_ms": 300, "retry_after_s": 0.2})})
    rows = list(orders.tail(9).iterrows())

    async def work(predictor):
        answers = [await predictor.order(_order(row)) for _, row in rows[:3]]
        if failure == "killed":
            server["process"].kill()
            server["process"].wait()
        else:
            server["process"].send_signal(signal.SIGSTOP)
        predictor.features.fresh.clear()  # features are read again, not taken from the worker's cache
        answers += [await predictor.order(_order(row)) for _, row in rows[3:8]]
        spooled = [line for path in _spool_files(config) for line in path.read_bytes().splitlines()]
        if failure == "killed":
            server["process"] = server["start"]()  # its append-only file brings back what it acknowledged
        else:
            server["process"].send_signal(signal.SIGCONT)
        answers.append(await predictor.order(_order(rows[8][1])))
        # The shipper catches up by itself once Redis answers again (no drain, no request needed).
        await _until(lambda: predictor.log.backlog_bytes == 0, "the spool shipped after Redis came back")
        return answers, spooled, set(_records(config))

    answers, spooled, shipped = asyncio.run(_with_predictor(model, config, work, url=url))
    assert all(answer.degraded for answer in answers[3:8]), "Redis was gone for these answers"
    assert {decode(line)["prediction_id"] for line in spooled} >= {a.prediction_id for a in answers[3:8]}, \
        "each answer's record was in the spool before Redis came back"
    assert shipped >= {a.prediction_id for a in answers}, "every answered prediction is in the stream"
    assert _spool_files(config) == [], "a drained, fully shipped spool is deleted"


def test_the_shipper_retries_a_stalled_redis_ships_in_bounded_pipelines_and_truncates_a_shipped_spool(
        redis_store, durable_redis):
    """Records appended while Redis stalls wait in the spool (the shipper's pipelines time out and are retried);
    once it answers they are all shipped, no pipeline over SHIP_BYTES, and the shipped spool is truncated."""
    settings, _, _ = redis_store
    port, server = durable_redis
    url = f"redis://127.0.0.1:{port}/0"
    config = settings.model_copy(update={"redis_url": url, "prediction_log": settings.prediction_log.model_copy(
        update={"ship_timeout_ms": 300, "retry_after_s": 0.2})})
    pipelines: list[int] = []
    errors: list[str] = []

    def count(event: str, n: int) -> None:
        if event == "prediction_log:shipped":
            pipelines.append(n)
        elif event.startswith("prediction_log_error:"):
            errors.append(event)

    padding = "x" * 1000
    total = ROTATE_BYTES // 1000 + 50  # past the size at which a shipped spool is truncated

    async def work() -> dict[str, int]:
        client = redis_client(url)
        log = PredictionLog(client, config, count)
        try:
            server["process"].send_signal(signal.SIGSTOP)
            for i in range(total):
                log.write({"prediction_id": f"p{i:05d}", "kind": "order", "padding": padding})
            appended = log.backlog_bytes
            await _until(lambda: errors, "a pipeline to the stalled Redis failed")
            held = log.spool_path.stat().st_size
            server["process"].send_signal(signal.SIGCONT)
            await _until(lambda: log.backlog_bytes == 0, "the spool shipped once Redis answered")
            return {"appended": appended, "held": held, "after": log.spool_path.stat().st_size}
        finally:
            await log.drain()
            await client.aclose()

    sizes = asyncio.run(work())
    assert sizes["held"] == sizes["appended"] > ROTATE_BYTES, "every record waited in the spool while Redis stalled"
    assert sum(pipelines) == total and max(pipelines) <= SHIP_BYTES // 1000, pipelines
    assert set(_records(config)) == {f"p{i:05d}" for i in range(total)}
    assert sizes["after"] == 0, "a shipped spool past ROTATE_BYTES is truncated"
    assert _spool_files(config) == []


def test_a_worker_ships_the_spools_dead_workers_left_first(redis_store):
    """A restarted worker (a container keeps its spool folder) ships what the dead ones left, a line cut short by
    the crash skipped, before its own records; the files are deleted once shipped."""
    settings, _, _ = redis_store
    folder = spool_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is no process's now
    left = [encode({"prediction_id": f"left-{i}", "kind": "order"}) for i in range(3)]
    (folder / f"{dead.pid}.jsonl").write_bytes(b"\n".join(left) + b'\n{"prediction_id": "cut')
    (folder / f"{os.getpid()}.jsonl").write_bytes(encode({"prediction_id": "own-pid", "kind": "order"}) + b"\n")

    async def work() -> None:
        client = redis_client(settings.redis_url)
        log = PredictionLog(client, settings)
        try:
            log.write({"prediction_id": "new", "kind": "order"})
            await _until(lambda: log.backlog_bytes == 0 and len(_spool_files(settings)) == 1, "left spools shipped")
        finally:
            await log.drain()
            await client.aclose()

    asyncio.run(work())
    order = [decode(fields[FIELD])["prediction_id"] for _, fields in
             redis.Redis.from_url(settings.redis_url).xrange(stream_key(settings.feast_project))]
    assert sorted(order[:-1]) == ["left-0", "left-1", "left-2", "own-pid"] and order[-1] == "new"
    assert _spool_files(settings) == []


def _land(namespace: str) -> dict:
    from flows.land_predictions import land_predictions

    get_settings.cache_clear()
    return land_predictions(namespace=namespace)


def _landed(settings) -> pd.DataFrame:
    from flows.land_predictions import predictions_path

    return pd.read_parquet(predictions_path(settings))


def test_the_land_flow_ships_and_lands_a_dead_workers_spool_that_no_worker_shipped(redis_store, prefect_server):
    settings, _, _ = redis_store
    folder = spool_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is no process's now
    left = [encode({"prediction_id": f"dead-{i}", "kind": "quote", "logged_at": time.time(),
                    "created_at": "2026-10-05T12:00:00+00:00"}) for i in range(4)]
    (folder / f"{dead.pid}.jsonl").write_bytes(b"\n".join(left) + b'\n{"prediction_id": "cut')

    summary = _land(settings.feast_project)
    assert summary["spool_replayed"] == 4 and summary["landed"] == 4, summary
    assert set(_landed(settings)["prediction_id"]) == {f"dead-{i}" for i in range(4)}
    assert _spool_files(settings) == [], "a replayed spool is deleted"


def test_landing_claims_what_a_dead_reader_left_trims_only_after_writing_and_never_duplicates(
        model, redis_store, prefect_server, monkeypatch):
    from flows.land_predictions import GROUP, predictions_path

    settings, _, orders = redis_store
    answers = asyncio.run(_with_predictor(model, settings, lambda p: asyncio.gather(
        *[p.order(_order(row)) for _, row in orders.tail(30).iterrows()])))
    client, key = redis.Redis.from_url(settings.redis_url), stream_key(settings.feast_project)
    recorded = {decode(fields[FIELD])["prediction_id"]: fields[FIELD] for _, fields in client.xrange(key)}
    client.xgroup_create(key, GROUP, id="0", mkstream=True)
    client.xreadgroup(GROUP, "died", {key: ">"}, count=5)  # read, never acknowledged: its lander died

    predictions_path(settings).parent.mkdir(parents=True, exist_ok=True)
    predictions_path(settings).write_text("not a folder")  # the landing's write fails
    with pytest.raises(OSError):
        _land(settings.feast_project)
    assert client.xlen(key) == 30, "nothing trimmed before it is landed"
    assert client.xpending(key, GROUP)["pending"] == 30

    predictions_path(settings).unlink()
    monkeypatch.setenv("ETA_PREDICTION_LOG__CLAIM_IDLE_S", "0")  # the dead lander's entries may be taken now
    first = _land(settings.feast_project)
    assert first["landed"] == 30 and first["stream_left"] == 0 and client.xlen(key) == 0
    assert client.xpending(key, GROUP)["pending"] == 0

    # A spooled copy of records that also reached Redis comes back: landed once only.
    for answer in answers[:10]:
        client.xadd(key, {FIELD: recorded[answer.prediction_id]})
    second = _land(settings.feast_project)
    assert second["landed"] == 0 and second["duplicates_skipped"] == 10 and client.xlen(key) == 0
    landed = _landed(settings)
    assert landed["prediction_id"].is_unique and set(landed["prediction_id"]) == {a.prediction_id for a in answers}


def test_predictions_of_orders_ingested_later_are_joined_by_a_later_run(model, redis_store, prefect_server,
                                                                        tmp_path):
    settings, _, _ = redis_store
    later = simulate_orders(SimulationSettings(markets=2, stores=10, days=1, seed=21, start=date(2026, 10, 5)))
    orders_file = tmp_path / "later_orders.csv"
    later.to_csv(orders_file, index=False)  # what the app later exports, with no ids of its own
    answers = asyncio.run(_with_predictor(model, settings, lambda p: asyncio.gather(
        *[p.order(_order(row)) for _, row in later.iterrows()])))

    before = _land(settings.feast_project)
    assert before["landed"] == len(later) and before["joined"] == 0 and before["unjoined"] == len(later)

    ingest_batch(load_orders_file(orders_file, settings.validation), settings)
    after = _land(settings.feast_project)
    assert after["landed"] == 0 and after["joined"] == len(later) and after["unjoined"] == 0

    from flows.land_predictions import joined_path

    joined = pd.read_parquet(joined_path(settings))
    assert set(joined["prediction_id"]) == {a.prediction_id for a in answers}
    history = read_history(settings).set_index("order_id")
    expected = delivery_minutes(history.loc[joined["order_id"]]).to_numpy()
    np.testing.assert_allclose(joined["actual_minutes"].to_numpy(), expected)
    served = model_inputs({name: joined[name] for name in [*ORDER_REQUEST_FIELDS, "created_at",
                                                           *STORE_HISTORY_FEATURES, *MARKET_STATE_FEATURES]})
    np.testing.assert_array_equal(joined[MODEL_FEATURES].to_numpy(), served)
    for column in ("kind", "logged_at", "model_version", "store_history_age_s", "market_state_age_s", "degraded",
                   "minutes", "range_low", "range_high"):
        assert column in joined.columns
    minutes = {a.prediction_id: a.minutes for a in answers}
    assert joined["minutes"].tolist() == [minutes[p] for p in joined["prediction_id"]]


def test_an_answer_of_the_real_service_is_in_the_landed_log_joined_with_its_order(service_url, settings,
                                                                                  prefect_server):
    order = read_history(settings).iloc[-1]
    body = {field: order[field].item() for field in ORDER_REQUEST_FIELDS} | {"created_at": order["created_at"].isoformat()}
    answer = httpx.post(f"{service_url}/eta/order", json=body, timeout=10).json()
    assert answer["order_id"] == order["order_id"], "the service derives the id ingestion gave the order"
    asyncio.run(_until(lambda: answer["prediction_id"] in _records(settings), "the service shipped the record"))

    from flows.land_predictions import joined_path, land_predictions

    summary = land_predictions()
    assert summary["landed"] >= 1
    landed = _landed(settings)
    assert answer["prediction_id"] in set(landed["prediction_id"])
    joined = pd.read_parquet(joined_path(settings))
    row = joined[joined["prediction_id"] == answer["prediction_id"]].iloc[0]
    assert row["minutes"] == answer["minutes"] and row["order_id"] == order["order_id"]
    assert row["actual_minutes"] == pytest.approx((order["actual_delivery_time"] - order["created_at"]).total_seconds() / 60)
