"""Data tests: the orders schema, the file loader's rejections, the simulator, idempotent ingest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eta.orders.ingest import BatchRejected, ingest_batch, read_history
from eta.orders.schema import ORDER_COLUMNS, delivery_minutes, load_orders_file, validate_orders
from eta.orders.simulate import simulate_orders
from eta.settings import SimulationSettings
from flows.ingest import ingest
from tests.helpers import shared_orders

SMALL = SimulationSettings(markets=2, stores=20, days=7, orders_per_store_day=10, seed=3)


def _as_csv_text(orders: pd.DataFrame) -> pd.DataFrame:
    text = orders[ORDER_COLUMNS].copy()
    for column in ["created_at", "actual_delivery_time"]:
        text[column] = text[column].dt.strftime("%Y-%m-%d %H:%M:%S")
    return text.astype(str)


def test_malformed_rows_are_rejected_with_the_field_and_reason(tmp_path: Path, settings):
    rows = _as_csv_text(simulate_orders(SMALL).head(8))
    rows.loc[0, "total_items"] = "three"
    rows.loc[1, "actual_delivery_time"] = "2020-01-01 00:00:00"  # before creation
    rows.loc[2, "market_id"] = ""
    rows.loc[3, "total_onshift_dashers"] = "-4"
    rows.loc[4, "created_at"] = "yesterday"
    rows.loc[7] = rows.loc[6]  # the same order twice
    path = tmp_path / "orders.csv"
    rows.to_csv(path, index=False)

    batch = load_orders_file(path, settings.validation)

    reasons = dict(zip(batch.rejected.index, batch.rejected["reason"]))
    assert len(batch.rejected) == 6 and len(batch.accepted) == 2
    assert batch.report["rows_in"] == 8 == batch.report["accepted"] + batch.report["rejected"]
    assert "total_items: cannot parse 'three'" in reasons[0]
    assert "delivered after created" in reasons[1]
    assert "market_id" in reasons[2] and "not_nullable" in reasons[2]
    assert "total_onshift_dashers" in reasons[3] and "-4" in reasons[3]
    assert "created_at: cannot parse 'yesterday'" in reasons[4]
    assert "duplicate" in reasons[5]
    assert batch.rejected["total_items"].iloc[0] == "three", "rejected rows keep their original values"


def test_file_without_the_layout_is_refused_naming_the_missing_columns(tmp_path: Path, settings):
    path = tmp_path / "orders.csv"
    pd.DataFrame({"store_id": [1], "created_at": ["2015-01-01"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="actual_delivery_time"):
        load_orders_file(path, settings.validation)


def test_real_doordash_sample_loads_with_every_row_accounted_for(settings):
    batch = load_orders_file(shared_orders(), settings.validation)
    assert batch.report["rows_in"] == 19_743
    assert len(batch.accepted) + len(batch.rejected) == 19_743
    assert len(batch.rejected) < 0.02 * 19_743
    assert batch.rejected["reason"].str.len().gt(0).all()
    assert batch.accepted["order_id"].is_unique
    assert (delivery_minutes(batch.accepted) > 0).all()


def test_simulator_is_seeded_and_valid(settings):
    first, again = simulate_orders(SMALL), simulate_orders(SMALL)
    other = simulate_orders(SMALL.model_copy(update={"seed": 4}))
    pd.testing.assert_frame_equal(first, again)
    assert not first["created_at"].equals(other["created_at"])
    batch = validate_orders(first, settings.validation)
    assert len(batch.rejected) == 0 and list(first.columns) == ORDER_COLUMNS


def test_simulated_marketplace_has_meal_peaks_busy_weekends_and_a_heavy_tail():
    orders = simulate_orders(SimulationSettings(markets=3, stores=80, days=14, seed=11))
    hours = orders["created_at"].dt.hour.value_counts()
    assert hours[12] > 3 * hours[4] and hours[18] > 3 * hours[4]
    per_day = orders.groupby(orders["created_at"].dt.date).size()
    weekday = pd.to_datetime(pd.Series(per_day.index)).dt.dayofweek.to_numpy()
    assert per_day.to_numpy()[weekday >= 4].mean() > per_day.to_numpy()[weekday < 4].mean()
    minutes = delivery_minutes(orders)
    assert minutes.quantile(0.99) > 1.8 * minutes.median()
    pressure = orders["total_outstanding_orders"] / orders["total_onshift_dashers"]
    assert minutes[pressure > pressure.quantile(0.9)].mean() > minutes[pressure < pressure.quantile(0.1)].mean()


def test_ingesting_the_same_batch_twice_changes_nothing(local_settings):
    batch = validate_orders(simulate_orders(SMALL), local_settings.validation)
    first = ingest_batch(batch, local_settings)
    held = read_history(local_settings)
    again = ingest_batch(batch, local_settings)
    assert first["new_orders"] == len(batch.accepted) and again["new_orders"] == 0
    pd.testing.assert_frame_equal(read_history(local_settings), held)


def test_ingesting_on_a_clock_takes_the_orders_delivered_before_it_then_the_rest(local_settings):
    simulated = validate_orders(simulate_orders(local_settings.simulation), local_settings.validation).accepted
    cut = simulated["created_at"].min().normalize() + pd.Timedelta(days=2)
    delivered = simulated["actual_delivery_time"] < cut
    assert 0 < delivered.sum() < len(simulated)
    first = ingest.fn(None, local_settings, cut.isoformat())
    held = read_history(local_settings)
    assert first["new_orders"] == len(held) == delivered.sum()
    assert set(held["order_id"]) == set(simulated.loc[delivered, "order_id"])
    rest = ingest.fn(None, local_settings)  # the clock moved on: the rest, delivered later
    assert rest["new_orders"] == len(simulated) - delivered.sum()
    assert len(read_history(local_settings)) == len(simulated)


def test_a_mostly_bad_batch_fails_and_the_history_is_untouched(local_settings):
    orders = simulate_orders(SMALL)
    ingest_batch(validate_orders(orders.head(50), local_settings.validation), local_settings)
    broken = orders.copy()
    broken["actual_delivery_time"] = broken["created_at"] - pd.Timedelta(minutes=1)
    with pytest.raises(BatchRejected, match="delivered after created"):
        ingest_batch(validate_orders(broken, local_settings.validation), local_settings)
    assert len(read_history(local_settings)) == 50
    assert np.isfinite(delivery_minutes(read_history(local_settings))).all()
