"""A seeded marketplace simulator producing orders in the canonical (DoorDash) layout.

Delivery time = order placement + kitchen prep (slower when the kitchen is busy and the basket big)
+ wait for a courier (longer when outstanding orders outnumber on-shift couriers) + the drive,
with a heavy right tail of lost couriers and late kitchens, as in the real data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from eta.settings import SimulationSettings, WorldChange

CATEGORIES = ["american", "pizza", "mexican", "burger", "sandwich", "chinese", "japanese", "indian", "thai", "cafe"]
PLACE_SECONDS_BY_PROTOCOL = np.array([251.0, 251.0, 446.0, 251.0, 446.0, 251.0, 446.0])
SUPPLY_MISS_SD = 0.05  # couriers on shift miss the forecast of demand by about 5% of it, either way
SUPPLY_MISS_HOURS = 0.5  # and a miss fades within the hour (a late shift change, a rush nobody planned for)


def meal_intensity(minute_of_week: np.ndarray) -> np.ndarray:
    """Relative order rate: lunch and dinner peaks, quiet nights, busier Friday to Sunday."""
    hour = (minute_of_week % 1440) / 60.0
    day = minute_of_week // 1440
    peaks = 0.15 + 1.0 * np.exp(-((hour - 12.0) ** 2) / 2.0) + 1.4 * np.exp(-((hour - 18.5) ** 2) / 3.0)
    return peaks * np.where(day >= 4, 1.25, 1.0)


def supply_miss(rng: np.random.Generator, markets: int, minutes: int) -> np.ndarray:
    """How far each market's couriers miss the forecast of demand, minute by minute: smooth misses pulled back
    toward none (an Ornstein-Uhlenbeck process), so an unchanged world looks the same week after week.

    A miss fades with a time constant of SUPPLY_MISS_HOURS and spreads SUPPLY_MISS_SD around zero; the first
    minute starts from that spread, as if the market had run for ever. (A random walk instead wanders off: a
    market's couriers moved by up to half from one week to the next, and the weekly report rightly flagged it.)
    """
    pull = 1 / (SUPPLY_MISS_HOURS * 60)
    shocks = rng.normal(0, SUPPLY_MISS_SD * np.sqrt(pull * (2 - pull)), size=(markets, minutes))
    shocks[:, 0] = rng.normal(0, SUPPLY_MISS_SD, size=markets)
    return lfilter([1.0], [1.0, pull - 1], shocks, axis=1)


def _market_state(rng: np.random.Generator, markets: int, minutes: int, start_dow: int) -> dict[str, np.ndarray]:
    """Per market and minute: on-shift couriers, busy couriers and outstanding orders."""
    minute_of_week = (np.arange(minutes) + start_dow * 1440) % (7 * 1440)
    load = meal_intensity(minute_of_week)[None, :] * rng.uniform(15, 60, size=(markets, 1))
    # Courier supply follows a forecast of demand (its daily and weekly shape) and misses it for a while.
    onshift = np.maximum(1, np.round(load * (0.9 + supply_miss(rng, markets, minutes))))
    outstanding = np.maximum(0, np.round(load * 1.1 * rng.lognormal(0, 0.2, size=(markets, minutes))))
    busy = np.minimum(onshift, np.round(outstanding * 0.85))
    return {"total_onshift_dashers": onshift, "total_busy_dashers": busy, "total_outstanding_orders": outstanding}


def simulate_orders(config: SimulationSettings) -> pd.DataFrame:
    """Generate orders for `config.stores` stores in `config.markets` markets over `config.days` days."""
    rng = np.random.default_rng(config.seed)
    minutes = config.days * 1440
    start = pd.Timestamp(config.start, tz="UTC")

    store_market = rng.integers(1, config.markets + 1, size=config.stores)
    store_popularity = rng.lognormal(0, 0.6, size=config.stores)
    store_prep_minutes = rng.uniform(6, 22, size=config.stores)
    store_protocol = rng.integers(1, 8, size=config.stores)
    store_category = rng.choice(CATEGORIES, size=config.stores)

    expected = config.stores * config.days * config.orders_per_store_day
    orders_per_store = rng.poisson(expected * store_popularity / store_popularity.sum())
    store_idx = np.repeat(np.arange(config.stores), orders_per_store)
    n = len(store_idx)

    minute_of_week = (np.arange(minutes) + start.dayofweek * 1440) % (7 * 1440)
    rate = meal_intensity(minute_of_week)
    minute = rng.choice(minutes, size=n, p=rate / rate.sum())
    created = start + pd.to_timedelta(minute * 60 + rng.uniform(0, 60, size=n), unit="s")

    market_idx = store_market[store_idx] - 1
    state = {k: v[market_idx, minute] for k, v in _market_state(rng, config.markets, minutes, start.dayofweek).items()}
    # Every random draw below is made for every order, changed world or not, so a scenario's days before
    # its change are exactly the unchanged world's.
    changed = {change.kind: _changed(change, minute, market_idx) for change in config.changes}
    shortage = _size(config, "courier_shortage")
    if "courier_shortage" in changed:
        rows = changed["courier_shortage"]
        state["total_onshift_dashers"] = np.where(rows, np.maximum(1, np.round(state["total_onshift_dashers"] * (1 - shortage))),
                                                  state["total_onshift_dashers"])
        state["total_outstanding_orders"] = np.where(rows, np.round(state["total_outstanding_orders"] * (1 + shortage)),
                                                     state["total_outstanding_orders"])
        state["total_busy_dashers"] = np.minimum(state["total_onshift_dashers"], np.round(state["total_outstanding_orders"] * 0.85))

    items = 1 + rng.poisson(1.8, size=n)
    distinct = np.minimum(items, 1 + rng.binomial(items - 1, 0.6))
    item_price = rng.lognormal(np.log(900), 0.45, size=(n, 2))
    min_price, max_price = np.round(item_price.min(axis=1)), np.round(item_price.max(axis=1))
    menu = _size(config, "menu_change") * changed.get("menu_change", 0)
    extra_items = np.round(5 * menu)
    items, distinct = items + extra_items, distinct + extra_items
    subtotal = np.round(items * (min_price + max_price) / 2 * rng.uniform(0.9, 1.1, size=n))
    protocol = store_protocol[store_idx]
    place_s = PLACE_SECONDS_BY_PROTOCOL[protocol - 1]
    drive_s = np.clip(rng.lognormal(np.log(550), 0.45, size=n), 60, 2400).round()

    kitchen_load = 1 + 0.5 * rate[minute] * store_popularity[store_idx] / store_popularity.mean() / rate.max()
    prep = store_prep_minutes[store_idx] * (1 + 0.07 * (items - 1)) * kitchen_load * (1 + menu)
    pressure = state["total_outstanding_orders"] / state["total_onshift_dashers"]
    courier_wait = 2 + 10 * np.maximum(0, pressure - 0.8)
    drive = drive_s / 60 * rng.lognormal(0, 0.15, size=n) * (1 + _size(config, "rain") * changed.get("rain", 0))
    tail = np.where(rng.random(n) < 0.05, rng.exponential(25, size=n), 0)
    minutes_total = place_s / 60 * rng.uniform(0.8, 1.3, size=n) + prep + courier_wait + drive + tail
    minutes_total += rng.normal(0, 3, size=n)
    minutes_total = np.maximum(minutes_total, drive_s / 60 + 3)

    orders = pd.DataFrame(
        {
            "market_id": market_idx + 1,
            "created_at": created,
            "actual_delivery_time": created + pd.to_timedelta(np.round(minutes_total * 60), unit="s"),
            "store_id": store_idx + 1,
            "store_primary_category": store_category[store_idx],
            "order_protocol": protocol.astype(float),
            "total_items": items.astype(float),
            "subtotal": subtotal,
            "num_distinct_items": distinct.astype(float),
            "min_item_price": min_price,
            "max_item_price": max_price,
            **state,
            "estimated_order_place_duration": place_s,
            "estimated_store_to_consumer_driving_duration": drive_s,
        }
    )
    orders["created_at"] = orders["created_at"].dt.floor("s")
    orders["actual_delivery_time"] = orders["actual_delivery_time"].dt.floor("s")
    if "new_stores" in changed:
        opening = store_idx >= config.stores * (1 - _size(config, "new_stores"))
        orders = orders[~(opening & ~changed["new_stores"])]
    return orders.sort_values("created_at", kind="stable").reset_index(drop=True)


def _changed(change: WorldChange, minute: np.ndarray, market_idx: np.ndarray) -> np.ndarray:
    """Which orders a change reaches: created on or after its day, in its market (or any)."""
    rows = minute >= change.from_day * 1440
    return rows if change.market is None else rows & (market_idx + 1 == change.market)


def _size(config: SimulationSettings, kind: str) -> float:
    return next((change.size for change in config.changes if change.kind == kind), 0.0)
