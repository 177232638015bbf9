"""Incremental materialization into the real Redis: idempotent, an overlap for late orders, no gap after a failure."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
import redis

from eta.feature_store import incremental_start, materialize
from eta.feature_tables import write_feature_tables
from eta.ingest import ingest_batch
from eta.orders import validate_orders
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


def test_a_failed_run_is_retried_from_where_the_last_good_one_ended(redis_store, monkeypatch):
    settings, store, _ = redis_store
    overlap = timedelta(minutes=settings.features.materialize_overlap_minutes)
    resume = incremental_start(store, overlap)
    tables = write_feature_tables(settings)

    def broken(*args, **kwargs):
        raise ConnectionError("Redis went away mid-run")

    monkeypatch.setattr(type(store), "materialize", broken)
    with pytest.raises(ConnectionError):
        apply_and_materialize.fn(tables, settings, full=False)
    monkeypatch.undo()
    from eta.feature_store import feature_store

    assert incremental_start(feature_store(settings, "redis"), overlap) == resume, "nothing recorded for the failed run"
