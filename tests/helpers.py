"""What several test modules use; plain functions and paths (conftest.py holds the fixtures)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from eta.features import STORE_HISTORY_FEATURES

SHARED_ORDERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "doordash_orders_sample.csv"


def fixed_store_history(frame: pd.DataFrame, orders: float = 20.0, mean: float = 45.0, p90: float = 60.0) -> pd.DataFrame:
    """`frame` with every store-history feature set to one value per statistic (for tests without Feast)."""
    value = {"orders": orders, "mean_delivery_min": mean, "p90_delivery_min": p90}
    return frame.assign(**{
        name: next(v for stat, v in value.items() if name.startswith(f"store_{stat}_")) for name in STORE_HISTORY_FEATURES
    })
