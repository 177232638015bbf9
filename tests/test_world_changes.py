"""The simulator's world changes (scenarios): from their day on, and only there, the world moves as named."""

from __future__ import annotations

import pandas as pd
import pytest

from eta.orders.schema import delivery_minutes
from eta.orders.simulate import simulate_orders
from eta.settings import SimulationSettings, WorldChange

WORLD = SimulationSettings(markets=2, stores=40, days=10, seed=11)
DAY = 6


@pytest.fixture(scope="module")
def unchanged() -> pd.DataFrame:
    return simulate_orders(WORLD)


def _changed(change: WorldChange) -> pd.DataFrame:
    return simulate_orders(WORLD.model_copy(update={"changes": [change]}))


def _after(orders: pd.DataFrame, market: int | None = None) -> pd.DataFrame:
    rows = orders["created_at"] >= pd.Timestamp(WORLD.start, tz="UTC") + pd.Timedelta(days=DAY)
    return orders[rows & (orders["market_id"] == market if market else rows)]


def _before(orders: pd.DataFrame) -> pd.DataFrame:
    return orders.drop(_after(orders).index).reset_index(drop=True)


@pytest.mark.parametrize("kind,size", [("rain", 0.4), ("courier_shortage", 0.4), ("menu_change", 0.3)])
def test_the_days_before_a_change_are_the_unchanged_world(unchanged, kind, size):
    changed = _changed(WorldChange(kind=kind, from_day=DAY, market=1, size=size))
    pd.testing.assert_frame_equal(_before(changed), _before(unchanged))
    assert not _after(changed, 1).equals(_after(unchanged, 1))


def test_rain_slows_the_real_drive_in_its_market_while_the_routing_estimate_stays(unchanged):
    rain = _changed(WorldChange(kind="rain", from_day=DAY, market=1, size=0.4))
    same = ["estimated_store_to_consumer_driving_duration", "total_busy_dashers", "total_items"]
    pd.testing.assert_frame_equal(_after(rain, 1)[same], _after(unchanged, 1)[same])
    slower = delivery_minutes(_after(rain, 1)) - delivery_minutes(_after(unchanged, 1))
    assert (slower >= 0).all() and slower.mean() > 2.5, "drives about 40% longer: minutes more per order"
    pd.testing.assert_frame_equal(_after(rain, 2), _after(unchanged, 2))


def test_a_courier_shortage_raises_busy_ratio_and_outstanding_orders(unchanged):
    short = _after(_changed(WorldChange(kind="courier_shortage", from_day=DAY, market=1, size=0.4)), 1)
    usual = _after(unchanged, 1)
    assert (short["total_onshift_dashers"] <= usual["total_onshift_dashers"]).all()
    assert short["total_outstanding_orders"].sum() > 1.3 * usual["total_outstanding_orders"].sum()
    per_courier = lambda frame, what: (frame[what] / frame["total_onshift_dashers"]).mean()  # noqa: E731
    # Busy couriers are nearly all of them already at the simulated world's usual load: the ratio can only
    # edge up; outstanding orders per courier is where a shortage shows.
    assert per_courier(short, "total_busy_dashers") >= per_courier(usual, "total_busy_dashers")
    assert per_courier(short, "total_outstanding_orders") > 1.5 * per_courier(usual, "total_outstanding_orders")
    assert delivery_minutes(short).mean() > delivery_minutes(usual).mean() + 5


def test_a_menu_change_brings_bigger_baskets_and_slower_kitchens_everywhere(unchanged):
    menu = _after(_changed(WorldChange(kind="menu_change", from_day=DAY, size=0.3)))
    usual = _after(unchanged)
    assert (menu["total_items"] - usual["total_items"] == 2).all() and (menu["subtotal"] > usual["subtotal"]).mean() > 0.9
    assert delivery_minutes(menu).mean() > delivery_minutes(usual).mean() + 5


def test_new_stores_have_no_orders_before_they_open(unchanged):
    opened = _changed(WorldChange(kind="new_stores", from_day=DAY, size=0.2))
    new = opened["store_id"] > WORLD.stores * 0.8
    assert new.any() and not _before(opened)["store_id"].gt(WORLD.stores * 0.8).any()
    pd.testing.assert_frame_equal(_after(opened).reset_index(drop=True), _after(unchanged).reset_index(drop=True))


def test_a_change_reads_from_the_environment_as_json(monkeypatch):
    from eta.settings import Settings

    monkeypatch.setenv("ETA_SIMULATION__CHANGES", '[{"kind": "rain", "from_day": 3, "market": 2, "size": 0.4}]')
    assert Settings().simulation.changes == [WorldChange(kind="rain", from_day=3, market=2, size=0.4)]
