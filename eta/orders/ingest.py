"""Ingest a batch of orders into the order history: validated, deduplicated by order id, idempotent."""

from __future__ import annotations

import pandas as pd

from eta.errors import UsageError, UserError
from eta.orders.schema import ORDER_COLUMNS, OrdersBatch
from eta.settings import Settings
from eta.storage import write_table


class BatchRejected(UserError):
    """Raised when most of a batch is invalid: something upstream is broken, not a few bad rows."""


def read_history(settings: Settings) -> pd.DataFrame:
    """All orders ingested so far, oldest first (empty with the right columns when none are)."""
    if not settings.orders_path.exists():
        return pd.DataFrame(columns=["order_id", *ORDER_COLUMNS])
    return pd.read_parquet(settings.orders_path)


def held_history(settings: Settings) -> pd.DataFrame:
    """All orders ingested so far; a namespace that never ingested any is a mistake (often a mistyped --namespace)."""
    if not settings.orders_path.exists():
        namespace = settings.feast_project
        known = sorted(path.parent.name for path in settings.data_path.glob("*/orders.parquet"))
        raise UsageError(
            f"namespace {namespace!r} holds no orders (namespaces that do: {', '.join(known) or 'none yet'}), "
            f"expected one of those, or its orders ingested first: eta ingest --namespace {namespace} [--orders FILE]"
        )
    return read_history(settings)


def ingest_batch(batch: OrdersBatch, settings: Settings, max_rejected_share: float = 0.5) -> dict[str, object]:
    """Append a validated batch's new orders to the history and its rejected rows to quarantine.

    Rerunning the same batch adds nothing: orders already held (same `order_id`) are skipped.
    """
    report = batch.report
    rows_in = int(report["rows_in"])
    if rows_in and len(batch.rejected) / rows_in > max_rejected_share:
        raise BatchRejected(
            f"{len(batch.rejected)} of {rows_in} rows failed validation (over {max_rejected_share:.0%}), so none "
            f"was ingested, expected mostly valid rows; rejected by reason: {report['reasons']}"
        )
    history = read_history(settings)
    new = batch.accepted[~batch.accepted["order_id"].isin(history["order_id"])]
    if len(new):
        merged = pd.concat([history, new[history.columns]], ignore_index=True) if len(history) else new
        merged = merged.sort_values(["created_at", "order_id"], kind="stable").reset_index(drop=True)
        write_table(merged, settings.orders_path)
    quarantine = settings.project_path / "quarantine.parquet"
    if len(batch.rejected):
        held = pd.read_parquet(quarantine) if quarantine.exists() else None
        rejected = batch.rejected.astype(str)
        merged_rejects = pd.concat([held, rejected], ignore_index=True) if held is not None else rejected
        write_table(merged_rejects.drop_duplicates(), quarantine)
    return {**report, "new_orders": len(new), "orders_held": len(history) + len(new)}
