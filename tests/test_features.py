"""Feature tests: pure feature functions, and point-in-time correctness through Feast's real offline store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eta.features.definitions import MODEL_FEATURES, epoch_seconds, hour_of_week, model_inputs, store_history
from eta.features.store import apply_definitions, feature_store
from eta.features.tables import write_feature_tables
from eta.model.training import training_set
from eta.orders.ingest import ingest_batch
from eta.orders.schema import delivery_minutes, validate_orders
from eta.orders.simulate import simulate_orders
from eta.settings import SimulationSettings
from tests.helpers import fixed_store_history


def _order(store_id: int, created: str, minutes: float, **fields) -> dict:
    created_at = pd.Timestamp(created, tz="UTC")
    base = simulate_orders(SimulationSettings(markets=1, stores=1, days=1, seed=1)).iloc[0].to_dict()
    return {**base, "store_id": store_id, "market_id": 1, "created_at": created_at,
            "actual_delivery_time": created_at + pd.Timedelta(minutes=minutes), **fields}


def test_hour_of_week_counts_from_monday_midnight_utc():
    stamps = pd.Series(pd.to_datetime(["2026-11-23 00:30", "2026-11-29 23:59"], utc=True))  # Mon, Sun
    np.testing.assert_array_equal(hour_of_week(epoch_seconds(stamps)), [0, 167])


def test_model_inputs_is_the_same_for_a_frame_and_for_per_request_lists():
    orders = simulate_orders(SimulationSettings(markets=1, stores=5, days=2, seed=2)).head(20)
    orders = fixed_store_history(orders, orders=3.0, mean=40.0, p90=np.nan)
    batch = model_inputs(orders)
    one_by_one = np.vstack([model_inputs({k: [v] for k, v in row.items()}) for row in orders.to_dict("records")])
    assert batch.shape == (20, len(MODEL_FEATURES))
    np.testing.assert_array_equal(batch, one_by_one)


def test_store_history_only_counts_orders_delivered_by_its_timestamp():
    orders = pd.DataFrame([
        _order(1, "2026-10-01 10:00", 30),   # delivered 10:30
        _order(1, "2026-10-01 10:10", 80),   # delivered 11:30
        _order(1, "2026-10-09 10:00", 20),   # delivered 10:20, 8 days later: the first two left the window
    ])
    history = store_history(orders).set_index("event_timestamp")
    assert history["store_orders_7d"].tolist() == [1, 2, 1]
    assert history["store_mean_delivery_min_7d"].tolist() == [30, 55, 20]


@pytest.fixture
def offline_store(local_settings):
    """Ingest orders, write feature tables, `feast apply`; return Feast's point-in-time training set for them."""

    def build(orders: pd.DataFrame) -> pd.DataFrame:
        batch = validate_orders(orders, local_settings.validation)
        ingest_batch(batch, local_settings)
        write_feature_tables(local_settings)
        store = feature_store(local_settings)
        apply_definitions(store, local_settings)
        return training_set(store, batch.accepted, local_settings.feature_service)

    return build


def test_an_order_still_on_its_way_never_reaches_a_later_training_row(offline_store):
    orders = pd.DataFrame([
        _order(7, "2026-10-01 09:00", 20),    # delivered 09:20, before B is created
        _order(7, "2026-10-01 10:00", 300),   # A: created before B, delivered 15:00, after B is created
        _order(7, "2026-10-01 11:00", 25),    # B
    ])
    frame = offline_store(orders)
    row_b = frame[frame["created_at"] == pd.Timestamp("2026-10-01 11:00", tz="UTC")].iloc[0]
    assert row_b["store_orders_7d"] == 1, "only the 09:20 delivery is known at 11:00"
    assert row_b["store_mean_delivery_min_7d"] == 20
    row_first = frame[frame["created_at"] == pd.Timestamp("2026-10-01 09:00", tz="UTC")].iloc[0]
    assert np.isnan(row_first["store_orders_7d"]), "no history before the store's first delivery: NULL, row kept"


def test_training_rows_match_a_brute_force_point_in_time_recomputation(offline_store):
    orders = simulate_orders(SimulationSettings(markets=2, stores=15, days=9, orders_per_store_day=8, seed=5))
    frame = offline_store(orders)
    assert len(frame) == len(orders), "DuckDB keeps rows with no point-in-time match"
    minutes = delivery_minutes(orders)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(frame), size=60, replace=False):
        row = frame.iloc[i]
        same_store = orders["store_id"] == row["store_id"]
        delivered = orders["actual_delivery_time"]
        known = same_store & (delivered <= row["created_at"])
        if not known.any():
            assert np.isnan(row["store_orders_7d"])
            continue
        last = delivered[known].max()
        window = known & (delivered > last - pd.Timedelta(days=7))
        assert row["store_orders_7d"] == window.sum()
        assert row["store_mean_delivery_min_7d"] == pytest.approx(minutes[window].mean())
        market = orders[(orders["market_id"] == row["market_id"]) & (orders["created_at"] <= row["created_at"])]
        latest = market[market["created_at"] == market["created_at"].max()].iloc[-1]
        assert row["total_onshift_dashers"] == latest["total_onshift_dashers"]


def test_model_inputs_time_features_are_the_calendar_of_each_order():
    orders = simulate_orders(SimulationSettings(markets=1, stores=3, days=9, seed=4))
    orders = fixed_store_history(orders)
    inputs = model_inputs(orders)
    column = {name: inputs[:, MODEL_FEATURES.index(name)] for name in ("hour_of_day", "day_of_week", "hour_of_week")}
    created = orders["created_at"].dt
    np.testing.assert_array_equal(column["hour_of_day"], created.hour)
    np.testing.assert_array_equal(column["day_of_week"], created.dayofweek)
    np.testing.assert_array_equal(column["hour_of_week"], created.dayofweek * 24 + created.hour)
    one = model_inputs({k: [v] for k, v in orders.iloc[-1].to_dict().items()})
    np.testing.assert_array_equal(one[0], inputs[-1])
