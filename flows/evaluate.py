"""Evaluate the production model on new orders: add them to the history, then score those created since a date.

The orders join the namespace's history (point in time: their features only use what was known when each
was created). Run: `eta evaluate --orders FILE --since DATE`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from eta.errors import UserError
from eta.features.store import feature_store
from eta.model.registry import load_model, require_production_tag
from eta.model.training import score, training_set
from eta.orders.ingest import read_history
from eta.orders.schema import load_orders_file
from eta.settings import Settings
from flows.common import namespace_for, retry_unless_user_error, settings_with
from flows.features import build_features
from flows.ingest import ingest_orders


@task(retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_unless_user_error)
def score_production(orders_file: str, since: str, settings: Settings) -> dict[str, object]:
    tag = require_production_tag(settings, "evaluate scores it")
    ids = load_orders_file(Path(orders_file), settings.validation).accepted["order_id"]
    history = read_history(settings)
    orders = history[history["order_id"].isin(ids) & (history["created_at"] >= pd.Timestamp(since, tz="UTC"))]
    if orders.empty:
        raise UserError(f"{orders_file} has no valid orders created since {since}, expected a --since before its "
                        "newest order")
    frame = training_set(feature_store(settings), orders, settings.feature_service)
    return {"model": tag, **score(load_model(tag), frame)}


@flow(name="evaluate-model", log_prints=True)
def evaluate_model(orders_file: str, since: str, namespace: str | None = None) -> dict[str, object]:
    namespace = namespace_for(orders_file, namespace)
    ingest_orders(orders_file=orders_file, namespace=namespace)
    build_features(namespace=namespace)
    metrics = score_production(orders_file, since, settings_with(namespace))
    get_run_logger().info("%s on %s orders since %s: MAE %.2f min", metrics["model"], metrics["n_orders"], since,
                          metrics["mae_min"])
    create_table_artifact(
        key="evaluation",
        table=[{"metric": k, "value": v} for k, v in metrics.items() if not isinstance(v, dict)],
        description=f"{metrics['model']} on {orders_file} since {since}",
    )
    create_table_artifact(
        key="evaluation-markets",
        table=[{"market": market, **row} for market, row in metrics["by_market"].items()],
        description=f"{metrics['model']} per market: orders, MAE, range coverage and width",
    )
    return metrics

