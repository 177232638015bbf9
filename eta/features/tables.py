"""Write the offline feature tables that Feast's sources read, from the order history."""

from __future__ import annotations

import pandas as pd

from eta.features.definitions import market_state, store_history
from eta.orders.ingest import held_history
from eta.settings import Settings
from eta.storage import write_table


def write_feature_tables(settings: Settings) -> dict[str, object]:
    """Recompute store history and market state from all orders held; returns row counts and the data window."""
    orders = held_history(settings)
    tables = {
        "store_history": store_history(orders),
        "market_state": market_state(orders),
    }
    for name, table in tables.items():
        write_table(table, settings.features_path / f"{name}.parquet")
    return {
        **{f"{name}_rows": len(table) for name, table in tables.items()},
        "start": orders["created_at"].min(),
        "end": max(orders["actual_delivery_time"].max(), orders["created_at"].max()) + pd.Timedelta(seconds=1),
    }
