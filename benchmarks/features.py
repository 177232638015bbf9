"""`make bench-features`: the feature pipeline at 1,000,000 simulated orders (5,000 stores, 20 markets).

Runs what the flows run, in one process, in a namespace of its own: ingest (validation), the offline
feature tables, Feast's point-in-time training set (DuckDB offline store), a full materialization into
the real Redis, an incremental one of the last 15 minutes, and a market-state push until the online
store shows it. Prints and writes `benchmarks/results/features.json`. 2 cores; run it alone.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("ETA_FEAST_PROJECT", "eta_bench_features")
os.environ.setdefault("ETA_ONLINE_STORE", "redis")

import pandas as pd  # noqa: E402

from eta.features.store import apply_definitions, feature_store, materialize, push_market_state  # noqa: E402
from eta.features.tables import write_feature_tables  # noqa: E402
from eta.model.training import training_set  # noqa: E402
from eta.orders.ingest import ingest_batch, read_history  # noqa: E402
from eta.orders.schema import validate_orders  # noqa: E402
from eta.orders.simulate import simulate_orders  # noqa: E402
from eta.settings import SimulationSettings, get_settings  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "features.json"


def _timed(work):
    began = time.perf_counter()
    result = work()
    return result, round(time.perf_counter() - began, 2)


def _ingest(orders: pd.DataFrame, settings) -> float:
    """Validation and ingestion time; the simulated frame is freed when this returns."""
    return _timed(lambda: ingest_batch(validate_orders(orders, settings.validation), settings))[1]


def _online_onshift(store, market_id: int) -> float | None:
    return store.get_online_features(
        features=["market_state:total_onshift_dashers"], entity_rows=[{"market_id": market_id}]
    ).to_dict()["total_onshift_dashers"][0]


def main() -> None:
    settings = get_settings()
    simulation = SimulationSettings(markets=20, stores=5_000, days=20, orders_per_store_day=10, seed=1)
    ingest_s = _ingest(simulate_orders(simulation), settings)
    tables, feature_tables_s = _timed(lambda: write_feature_tables(settings))
    store = feature_store(settings, "redis")
    apply_definitions(store, settings)
    history = read_history(settings)
    frame, training_set_s = _timed(lambda: training_set(store, history, settings.feature_service))
    rows = len(frame)
    del frame
    start, end = tables["start"].to_pydatetime(), tables["end"].to_pydatetime()
    _, materialize_full_s = _timed(lambda: materialize(store, start, end))
    _, materialize_incremental_s = _timed(lambda: materialize(store, end - pd.Timedelta(minutes=15), end))

    market = int(history["market_id"].iloc[-1])
    newest = history.tail(1).assign(created_at=end + pd.Timedelta(minutes=1), market_id=market,
                                    total_onshift_dashers=9_999.0)
    began = time.perf_counter()
    push_market_state(store, newest)
    while _online_onshift(store, market) != 9_999.0:
        time.sleep(0.001)
    push_to_online_ms = round((time.perf_counter() - began) * 1000, 1)

    result = {
        "orders": len(history),
        "stores": simulation.stores,
        "markets": simulation.markets,
        "ingest_validation_s": ingest_s,
        "feature_tables_s": feature_tables_s,
        "training_set_s": training_set_s,
        "training_rows": rows,
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "materialize_full_s": materialize_full_s,
        "materialize_incremental_s": materialize_incremental_s,
        "push_to_online_ms": push_to_online_ms,
        "cores": os.cpu_count(),
    }
    store.teardown()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
