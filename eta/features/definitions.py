"""Feature definitions, one pure function per feature.

Request-time features are computed by `model_inputs`, the one function both training (on the
point-in-time training set) and serving (on a request plus online features) call. Store history and
market state are computed from orders here and served by Feast.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from eta.orders.schema import BASKET_COLUMNS, ESTIMATE_COLUMNS, MARKET_STATE_COLUMNS, delivery_minutes

# Trailing windows of delivered orders: a week follows a kitchen's current form, four weeks give
# stores with few orders a history at all.
STORE_HISTORY_WINDOWS_DAYS = (7, 28)
STORE_HISTORY_FEATURES = [
    f"store_{stat}_{days}d"
    for days in STORE_HISTORY_WINDOWS_DAYS
    for stat in ("orders", "mean_delivery_min", "p90_delivery_min")
]
MARKET_STATE_FEATURES = MARKET_STATE_COLUMNS
REQUEST_FIELDS = ["created_at", "market_id", "order_protocol", *BASKET_COLUMNS, *ESTIMATE_COLUMNS]
# What an app sends for a placed order (the order time defaults to now).
ORDER_REQUEST_FIELDS = ["store_id", *[f for f in REQUEST_FIELDS if f != "created_at"]]
DERIVED_FEATURES = ["hour_of_day", "day_of_week", "hour_of_week", "busy_dasher_ratio", "outstanding_per_dasher"]
MODEL_FEATURES = [
    *[f for f in REQUEST_FIELDS if f != "created_at"],
    *STORE_HISTORY_FEATURES,
    *MARKET_STATE_FEATURES,
    *DERIVED_FEATURES,
]

Array = np.ndarray


def _as_float(values: Any) -> Array:
    """Numbers as float64, with None/NA as NaN (a missing online feature arrives as None)."""
    if isinstance(values, pd.Series):
        return values.to_numpy(dtype=float, na_value=np.nan)
    return np.asarray(values, dtype=float)


def epoch_seconds(created_at: Any) -> Array:
    """UTC seconds since the epoch, from datetimes (aware or UTC-naive), a pandas column or datetime64s.

    Plain numpy, no pandas parsing: a single request's timestamp costs microseconds, not a DataFrame.
    """
    if isinstance(created_at, (pd.Series, pd.DatetimeIndex)):
        stamps = pd.DatetimeIndex(created_at)
        stamps = stamps.tz_convert("UTC").tz_localize(None) if stamps.tz is not None else stamps
        return stamps.to_numpy(dtype="datetime64[s]").astype(np.int64).astype(float)
    if isinstance(created_at, np.ndarray) and np.issubdtype(created_at.dtype, np.datetime64):
        return created_at.astype("datetime64[s]").astype(np.int64).astype(float)
    return np.array([_utc_seconds(moment) for moment in created_at], dtype=float)


def _utc_seconds(moment: Any) -> float:
    if isinstance(moment, datetime) and not isinstance(moment, pd.Timestamp):
        # A naive datetime is UTC here, never the machine's local time.
        return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
    return pd.Timestamp(moment).timestamp()


# The time features take UTC epoch seconds (`epoch_seconds`), converted once per batch or request.
def hour_of_day(seconds: Array) -> Array:
    return np.floor(seconds / 3600) % 24


def day_of_week(seconds: Array) -> Array:
    """Monday = 0, as pandas counts (1970-01-01 was a Thursday)."""
    return (np.floor(seconds / 86_400) + 3) % 7


def hour_of_week(seconds: Array) -> Array:
    return day_of_week(seconds) * 24 + hour_of_day(seconds)


def _ratio(numerator: Array, denominator: Array) -> Array:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def busy_dasher_ratio(total_busy_dashers: Array, total_onshift_dashers: Array) -> Array:
    """Share of on-shift couriers already carrying an order: near 1, a new order waits for a courier."""
    return _ratio(total_busy_dashers, total_onshift_dashers)


def outstanding_per_dasher(total_outstanding_orders: Array, total_onshift_dashers: Array) -> Array:
    return _ratio(total_outstanding_orders, total_onshift_dashers)


def model_inputs(rows: Mapping[str, Any]) -> Array:
    """The model's input matrix (n rows x MODEL_FEATURES) from request fields and Feast features.

    `rows` maps each of REQUEST_FIELDS, STORE_HISTORY_FEATURES and MARKET_STATE_FEATURES to equal-length
    array-likes: a training-set DataFrame, or a request's fields joined with online features.
    Missing values stay NaN, which LightGBM handles natively.
    """
    columns = {name: _as_float(rows[name]) for name in MODEL_FEATURES if name not in DERIVED_FEATURES}
    seconds = epoch_seconds(rows["created_at"])  # once: the three time features share it
    derived = {
        "hour_of_day": hour_of_day(seconds),
        "day_of_week": day_of_week(seconds),
        "hour_of_week": hour_of_week(seconds),
        "busy_dasher_ratio": busy_dasher_ratio(columns["total_busy_dashers"], columns["total_onshift_dashers"]),
        "outstanding_per_dasher": outstanding_per_dasher(
            columns["total_outstanding_orders"], columns["total_onshift_dashers"]
        ),
    }
    columns.update(derived)
    return np.column_stack([columns[name] for name in MODEL_FEATURES])


def store_history(orders: pd.DataFrame) -> pd.DataFrame:
    """Trailing delivery stats per store, one row per delivery, stamped at the delivery time.

    A row stamped t summarises orders *delivered* in (t - window, t] for each window, so a point-in-time
    join at an order's creation never sees an order that was still on its way.
    """
    delivered = pd.DataFrame(
        {
            "store_id": orders["store_id"].to_numpy(),
            "event_timestamp": orders["actual_delivery_time"].to_numpy(),
            "minutes": delivery_minutes(orders).to_numpy(),
        }
    ).sort_values(["store_id", "event_timestamp"], kind="stable")
    history = pd.DataFrame(index=delivered.index)
    for days in STORE_HISTORY_WINDOWS_DAYS:
        rolling = delivered.groupby("store_id").rolling(f"{days}D", on="event_timestamp")["minutes"]
        history[f"store_orders_{days}d"] = rolling.count().to_numpy()
        history[f"store_mean_delivery_min_{days}d"] = rolling.mean().to_numpy()
        history[f"store_p90_delivery_min_{days}d"] = rolling.quantile(0.9).to_numpy()
    history.insert(0, "store_id", delivered["store_id"])
    history.insert(1, "event_timestamp", delivered["event_timestamp"])
    history["event_timestamp"] = pd.to_datetime(history["event_timestamp"], utc=True)
    # Two deliveries in the same second: the later row already includes both.
    history = history.drop_duplicates(["store_id", "event_timestamp"], keep="last")
    return history.reset_index(drop=True)


def market_state(orders: pd.DataFrame) -> pd.DataFrame:
    """Market supply and demand as each order reported it, stamped at the order's creation."""
    state = orders[["market_id", "created_at", *MARKET_STATE_FEATURES]].rename(columns={"created_at": "event_timestamp"})
    state = state.dropna(subset=MARKET_STATE_FEATURES, how="all").sort_values("event_timestamp", kind="stable")
    return state.drop_duplicates(["market_id", "event_timestamp"], keep="last").reset_index(drop=True)
