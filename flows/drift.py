"""Check drift: Evidently report between the production model's training window and the latest orders.

Writes HTML (open it in a browser) and JSON under the data folder's `reports/` and returns whether the data
drifted: the pipeline's last stage, a look at the orders as ingested. It is not the verdict on-call is alerted on
(`eta_drift_flagged`): a few recent days against the whole training window differ in their calendar even when
nothing changed; the weekly report (`flows.monitor`) judges a week against whole weeks and keeps that verdict.
Run: `python -m flows.drift` or `eta drift`.
"""

from __future__ import annotations

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from eta.model.registry import model_metadata, require_production_tag
from eta.orders.ingest import read_history
from eta.settings import Settings
from flows.common import retry_unless_user_error, settings_with
from monitoring.drift import drift_report, split_for_drift


@task(retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_unless_user_error)
def run_drift_report(settings: Settings) -> dict[str, object]:
    tag = require_production_tag(settings, "drift is measured against its training window")
    train_end = pd.Timestamp(model_metadata(tag)["window"]["train_end"])
    reference, current = split_for_drift(read_history(settings), train_end, settings.drift.recent_days)
    return {**drift_report(reference, current, settings.reports_path), "model": tag}


@flow(name="check-drift", log_prints=True, timeout_seconds=1800)
def check_drift(namespace: str | None = None, recent_days: float | None = None) -> dict[str, object]:
    settings = settings_with(namespace, drift__recent_days=recent_days)
    summary = run_drift_report(settings)
    get_run_logger().info(
        "drift detected: %s; drifted columns: %s; report: %s",
        summary["drift_detected"], summary["drifted_columns"], summary["html"],
    )
    create_markdown_artifact(
        key="drift-report",
        markdown=(
            f"**Dataset drift: {'yes' if summary['drift_detected'] else 'no'}** "
            f"({len(summary['drifted_columns'])} of {summary['columns_checked']} columns drifted: "
            f"{', '.join(summary['drifted_columns']) or 'none'}).\n\n"
            f"Reference {summary['reference_orders']} orders (training window of {summary['model']}), "
            f"current {summary['current_orders']} orders.\n\nReport: `{summary['html']}`"
        ),
    )
    return summary


if __name__ == "__main__":
    check_drift()
