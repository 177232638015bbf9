"""Training benchmark: 1,000,000 simulated orders (5,000 stores, 20 markets), the production model and its range.

Features are the same functions the pipeline uses; the point-in-time join is pandas' `merge_asof` here
(Feast's offline store is benchmarked by the feature pipeline), so the number is the training itself:
fit + conformal calibration + holdout scoring. Prints and writes `benchmarks/results/training.json`.
Run: `make bench-training` (2 cores here; nothing else should run meanwhile).
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import pandas as pd

from eta.features.definitions import store_history
from eta.model.training import LABEL, score, split_by_time, train_eta_model
from eta.orders.schema import delivery_minutes, order_ids
from eta.orders.simulate import simulate_orders
from eta.settings import SimulationSettings, get_settings

RESULTS = Path(__file__).resolve().parent / "results" / "training.json"


def training_frame(orders: pd.DataFrame) -> pd.DataFrame:
    history = store_history(orders).rename(columns={"event_timestamp": "known_at"})
    frame = orders.assign(order_id=order_ids(orders), **{LABEL: delivery_minutes(orders)}).sort_values("created_at")
    history["known_at"] = history["known_at"].astype(frame["created_at"].dtype)
    return pd.merge_asof(frame, history.sort_values("known_at"), left_on="created_at", right_on="known_at", by="store_id")


def main() -> None:
    settings = get_settings()
    simulation = SimulationSettings(markets=20, stores=5_000, days=20, orders_per_store_day=10, seed=1)
    started = time.perf_counter()
    orders = simulate_orders(simulation)
    frame = training_frame(orders)
    prepared_s = time.perf_counter() - started

    split = split_by_time(frame, settings.training)
    started = time.perf_counter()
    model = train_eta_model(split, settings.training)
    train_s = time.perf_counter() - started
    metrics = score(model, split.holdout)

    result = {
        "orders": len(orders),
        "models": 1,
        "train_rows": len(split.train),
        "train_s": round(train_s, 1),
        "data_prep_s": round(prepared_s, 1),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "holdout_mae_min": round(metrics["mae_min"], 2),
        "interval_coverage_80": round(metrics["interval_coverage_80"], 3),
        "cores": os.cpu_count(),
        "settings": {**settings.training.model_dump(), "simulation": simulation.model_dump(mode="json")},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
