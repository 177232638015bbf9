"""Fresh market state: the ingest path pushes each batch's newest market state to Feast's Redis online store."""

from __future__ import annotations

import pandas as pd
from feast import Entity

from eta.features.store import apply_definitions, feature_store, push_market_state
from eta.features.tables import write_feature_tables
from eta.orders.simulate import simulate_orders
from eta.settings import SimulationSettings


def _online_onshift(store, settings, market_id: int) -> float:
    return store.get_online_features(
        features=store.get_feature_service(settings.feature_service), entity_rows=[{"store_id": 1, "market_id": market_id}]
    ).to_dict()["total_onshift_dashers"][0]


def test_a_pushed_market_state_is_online_at_once_and_an_older_one_never_overwrites_it(redis_store):
    settings, store, orders = redis_store
    later = orders.tail(1).assign(created_at=orders["actual_delivery_time"].max() + pd.Timedelta(minutes=5),
                                  market_id=1, total_onshift_dashers=123.0)
    assert push_market_state(store, later) == 1
    assert _online_onshift(store, settings, 1) == 123.0
    stale = later.assign(created_at=later["created_at"] - pd.Timedelta(hours=1), total_onshift_dashers=7.0)
    push_market_state(store, stale)
    assert _online_onshift(store, settings, 1) == 123.0


def test_ingest_flow_pushes_the_new_batch_without_waiting_for_materialization(redis_store, prefect_server, monkeypatch):
    from eta.settings import get_settings
    from flows.ingest import ingest_orders

    settings, store, orders = redis_store
    monkeypatch.setenv("ETA_ONLINE_STORE", "redis")
    monkeypatch.setenv("ETA_FEAST_PROJECT", settings.feast_project)
    get_settings.cache_clear()
    fresh = orders.tail(3).assign(created_at=orders["actual_delivery_time"].max() + pd.Timedelta(minutes=10),
                                  market_id=2, total_onshift_dashers=[41.0, 42.0, 43.0])
    fresh["actual_delivery_time"] = fresh["created_at"] + pd.Timedelta(minutes=30)
    path = settings.project_path / "fresh.csv"
    fresh.to_csv(path, index=False)
    report = ingest_orders(orders_file=str(path), namespace=settings.feast_project)
    assert report["new_orders"] == 3 and report["markets_pushed"] == 1
    assert _online_onshift(store, settings, 2) == 43.0
    assert report["market_states_offline"] == 1, "the offline table holds the pushed state at once"
    from eta.model.training import training_set

    joined = training_set(store, fresh.assign(order_id=["a", "b", "c"]), settings.feature_service)
    assert list(joined["total_onshift_dashers"]) == [43.0] * 3, "a training join sees them without a features run"
    again = ingest_orders(orders_file=str(path), namespace=settings.feast_project)
    assert again["new_orders"] == 0 and again["market_states_offline"] == 0


def test_ingest_does_not_push_before_the_push_source_is_applied(local_settings):
    """The ingest flow's own task: before `eta features` applied the definitions there is nothing to push to
    (the batch is still ingested); once applied, the next batch's market state is pushed and online."""
    from eta.features.store import can_push_market_state
    from flows.ingest import ingest

    store = feature_store(local_settings)
    assert not can_push_market_state(store), "no registry yet"
    store.apply([Entity(name="store", join_keys=["store_id"])])  # a registry as a version without the push left it
    assert not can_push_market_state(store)
    orders = simulate_orders(SimulationSettings(markets=1, stores=2, days=1, seed=3))
    first = local_settings.project_path / "first.csv"
    first.parent.mkdir(parents=True, exist_ok=True)
    orders.to_csv(first, index=False)
    report = ingest.fn(str(first), local_settings)
    assert report["new_orders"] == len(orders) and "markets_pushed" not in report

    write_feature_tables(local_settings)
    apply_definitions(store, local_settings)
    assert can_push_market_state(store)
    later = orders.tail(1).assign(created_at=orders["actual_delivery_time"].max() + pd.Timedelta(minutes=5),
                                  total_onshift_dashers=77.0)
    later["actual_delivery_time"] = later["created_at"] + pd.Timedelta(minutes=30)
    second = local_settings.project_path / "second.csv"
    later.to_csv(second, index=False)
    report = ingest.fn(str(second), local_settings)
    assert report["markets_pushed"] == 1
    assert _online_onshift(feature_store(local_settings), local_settings, int(later["market_id"].iloc[0])) == 77.0
