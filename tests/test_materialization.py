"""Incremental materialization into the real Redis: idempotent, an overlap for late orders, no gap after a failure."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
import redis
from feast.infra.online_stores.redis import RedisOnlineStore

from eta.features.store import feature_store, incremental_start, materialize
from eta.features.tables import write_feature_tables
from eta.orders.ingest import ingest_batch
from eta.orders.schema import validate_orders
from flows.features import apply_and_materialize


def _online_rows(settings) -> dict[bytes, dict[bytes, bytes]]:
    client = redis.Redis.from_url(settings.redis_url)
    return {key: client.hgetall(key) for key in client.scan_iter(match=b"*" + settings.feast_project.encode())}


def _late_order(orders: pd.DataFrame, store_id: int, delivered: pd.Timestamp) -> pd.DataFrame:
    return orders.tail(1).assign(store_id=store_id, created_at=delivered - pd.Timedelta(minutes=35),
                                 actual_delivery_time=delivered)


def test_rerunning_a_window_leaves_redis_as_it_was(redis_store):
    settings, store, _ = redis_store
    before = _online_rows(settings)
    tables = write_feature_tables(settings)
    materialize(store, tables["start"].to_pydatetime(), tables["end"].to_pydatetime())
    assert before and _online_rows(settings) == before


def test_the_overlap_window_brings_in_a_late_order_and_without_it_the_order_is_missed(redis_store):
    settings, store, orders = redis_store
    last_end = incremental_start(store, timedelta(0))
    assert last_end is not None
    # Delivered 20 minutes before the last run ended, ingested only now.
    late = _late_order(orders, store_id=9_001, delivered=pd.Timestamp(last_end) - pd.Timedelta(minutes=20))
    ingest_batch(validate_orders(late, settings.validation), settings)
    tables = write_feature_tables(settings)

    no_overlap = settings.model_copy(update={"features": settings.features.model_copy(
        update={"materialize_overlap_minutes": 0})})
    result = apply_and_materialize.fn(tables, no_overlap, full=False)
    assert result["incremental"] and _store_orders(store, settings, 9_001) is None, "missed without the overlap"

    result = apply_and_materialize.fn(tables, settings, full=False)
    assert result["incremental"] and result["materialized_from"] < late["actual_delivery_time"].iloc[0]
    assert _store_orders(store, settings, 9_001) == 1.0, "the default hour of overlap covers it"


def _store_orders(store, settings, store_id: int) -> float | None:
    return store.get_online_features(features=["store_history:store_orders_28d"],
                                     entity_rows=[{"store_id": store_id}]).to_dict()["store_orders_28d"][0]


NEW_STORES = range(9_101, 9_107)


def test_a_failed_run_is_retried_from_where_the_last_good_one_ended(redis_store, monkeypatch):
    settings, store, orders = redis_store
    overlap = timedelta(minutes=settings.features.materialize_overlap_minutes)
    resume = incremental_start(store, overlap)
    last_end = resume + overlap
    recorded = _intervals(store, "store_history")
    # Six stores' first orders, delivered after the last good run ended: the next run must bring them in.
    new = pd.concat([_late_order(orders, store_id, pd.Timestamp(last_end) + pd.Timedelta(minutes=10 * (i + 1)))
                     for i, store_id in enumerate(NEW_STORES)], ignore_index=True)
    ingest_batch(validate_orders(new, settings.validation), settings)
    tables = write_feature_tables(settings)

    # Redis goes away in the middle of the store-history write: the first three new stores' rows (and
    # the overlap's older rows) reach the real Redis, then the connection is lost.
    real_write = RedisOnlineStore.online_write_batch
    reached = set(NEW_STORES[:3])

    def write_part_then_lose_redis(self, config, table, data, progress):
        if table.name != "store_history":
            return real_write(self, config, table, data, progress)
        written = [row for row in data if _store_id(row) not in NEW_STORES or _store_id(row) in reached]
        real_write(self, config, table, written, progress)
        raise redis.ConnectionError("Connection closed by server.")

    monkeypatch.setattr(RedisOnlineStore, "online_write_batch", write_part_then_lose_redis)
    with pytest.raises(redis.ConnectionError):
        apply_and_materialize.fn(tables, settings, full=False)
    monkeypatch.undo()
    online = [_store_orders(store, settings, s) for s in NEW_STORES]
    assert online == [1.0, 1.0, 1.0, None, None, None], "the run failed mid-way"
    fresh = feature_store(settings, "redis")
    assert _intervals(fresh, "store_history") == recorded, "nothing recorded for the failed run"
    assert incremental_start(fresh, overlap) == resume

    retried = apply_and_materialize.fn(tables, settings, full=False)
    assert retried["incremental"] and retried["materialized_from"] == resume, "retried from the last good run's end"
    assert [_store_orders(store, settings, s) for s in NEW_STORES] == [1.0] * len(NEW_STORES)
    assert incremental_start(feature_store(settings, "redis"), overlap) == tables["end"].to_pydatetime() - overlap


def _store_id(row) -> int:
    return row[0].entity_values[0].int64_val


def _intervals(store, view: str) -> list:
    return store.get_feature_view(view).materialization_intervals


def test_staleness_reads_the_feature_hashes_beside_the_prediction_log(redis_store):
    """The service logs into a stream named after the project (`eta:predictions:<project>`) in the same Redis:
    the features flow's staleness report must pass it by, not fail on it (WRONGTYPE) after the first answer."""
    from eta.features.staleness import online_staleness
    from eta.serving.prediction_log import FIELD, stream_key

    settings, _, orders = redis_store
    redis.Redis.from_url(settings.redis_url).xadd(stream_key(settings.feast_project), {FIELD: b"{}"})
    report = {row["feature_view"]: row for row in online_staleness(settings, ["store_history", "market_state"])}
    assert report["store_history"]["entities"] == orders["store_id"].nunique()
    assert report["market_state"]["entities"] == orders["market_id"].nunique()
