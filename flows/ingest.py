"""Ingest orders: validate a batch and add its new orders to the history.

The batch comes from a CSV/Parquet file in DoorDash's layout or, without a file, from BigQuery on the
`gcp` profile (incrementally) or the simulator.
Rejected rows go to quarantine with their reasons; a rerun of the same batch adds nothing. `delivered_before`
keeps the orders delivered before a moment: what the source holds then (a simulated clock: `make demo` ingests
the simulation but its last day, sends that day's orders to the service, then ingests them with their actuals).
Run: `python -m flows.ingest` or `eta ingest [--orders FILE]`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from eta.features.store import append_market_state_offline, can_push_market_state, feature_store, push_market_state
from eta.orders.ingest import ingest_batch, read_history
from eta.orders.schema import OrdersBatch, load_orders_file, validate_orders
from eta.orders.simulate import simulate_orders
from eta.serving.api import EARLIEST
from eta.settings import Settings
from flows.common import namespace_for, retry_unless_user_error, settings_with


def bigquery_batch(settings: Settings) -> OrdersBatch:
    """The orders BigQuery holds since just before the newest one held here (the `gcp` profile)."""
    from eta.orders.bigquery import bigquery_client, incremental_window, orders_query, read_orders

    held = read_history(settings)
    newest = held["created_at"].max() if len(held) else None
    since, until = incremental_window(newest, datetime.now(timezone.utc), settings.gcp, first_start=EARLIEST)
    sql, job = orders_query(settings.gcp, since, until)
    return validate_orders(read_orders(bigquery_client(settings.gcp), sql, job), settings.validation)


@task(retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_unless_user_error)
def ingest(orders_file: str | None, settings: Settings, delivered_before: str | None = None) -> dict[str, object]:
    if orders_file:
        batch = load_orders_file(Path(orders_file), settings.validation)
    elif settings.profile == "gcp":
        batch = bigquery_batch(settings)
    else:
        batch = validate_orders(simulate_orders(settings.simulation), settings.validation)
    if delivered_before is not None:
        cut = pd.Timestamp(delivered_before)
        cut = cut.tz_localize("UTC") if cut.tzinfo is None else cut
        delivered = batch.accepted["actual_delivery_time"] < cut
        batch = replace(batch, accepted=batch.accepted[delivered].reset_index(drop=True))
    report = ingest_batch(batch, settings)
    store = feature_store(settings)
    if len(batch.accepted) and can_push_market_state(store):
        report["markets_pushed"] = push_market_state(store, batch.accepted)
        report["market_states_offline"] = append_market_state_offline(settings, batch.accepted)
    return report


@flow(name="ingest-orders", log_prints=True, timeout_seconds=1800)
def ingest_orders(
    orders_file: str | None = None,
    namespace: str | None = None,
    days: int | None = None,
    stores: int | None = None,
    markets: int | None = None,
    seed: int | None = None,
    delivered_before: str | None = None,
) -> dict[str, object]:
    """`delivered_before` (UTC date or time): only the orders delivered before it."""
    settings = settings_with(
        namespace_for(orders_file, namespace),
        simulation__days=days, simulation__stores=stores, simulation__markets=markets, simulation__seed=seed
    )
    report = ingest(orders_file, settings, delivered_before)
    reasons = report.pop("reasons")
    get_run_logger().info("ingested %s: %s; rejected by reason: %s", orders_file or "simulated orders", report, reasons)
    create_table_artifact(
        key="ingest-report",
        table=[{"measure": k, "value": str(v)} for k, v in report.items()]
        + [{"measure": f"rejected: {k}", "value": str(v)} for k, v in reasons.items()],
        description=f"Validation of {orders_file or 'simulated orders'}",
    )
    return {**report, "reasons": reasons}


if __name__ == "__main__":
    ingest_orders()
