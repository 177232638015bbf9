"""Evidently data-drift report: the training window against the most recent orders."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from evidently import Report
from evidently.presets import DataDriftPreset

from eta.features.definitions import MODEL_FEATURES, STORE_HISTORY_FEATURES, model_inputs
from eta.orders.schema import delivery_minutes

# Store history is a rolling summary of the label itself; its drift shows up in `delivery_minutes`.
DRIFT_COLUMNS = [f for f in MODEL_FEATURES if f not in STORE_HISTORY_FEATURES]


def drift_frame(orders: pd.DataFrame) -> pd.DataFrame:
    """What the model sees of each order (without store history), plus the label."""
    rows = orders.assign(**{name: float("nan") for name in STORE_HISTORY_FEATURES})
    frame = pd.DataFrame(model_inputs(rows), columns=MODEL_FEATURES)[DRIFT_COLUMNS]
    frame["delivery_minutes"] = delivery_minutes(orders).to_numpy()
    return frame


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, out_dir: Path) -> dict[str, object]:
    """Run Evidently's drift preset; write HTML and JSON; say whether the dataset drifted and which columns."""
    if reference.empty or current.empty:
        raise ValueError(f"drift needs orders on both sides: reference has {len(reference)}, current {len(current)}")
    snapshot = Report([DataDriftPreset()], include_tests=True).run(
        current_data=drift_frame(current), reference_data=drift_frame(reference)
    )
    results = snapshot.dict()
    column_tests = {t["name"].removeprefix("Value Drift for column "): t for t in results["tests"]}
    drifted = sorted(name for name, t in column_tests.items() if name in DRIFT_COLUMNS + ["delivery_minutes"]
                     and t["status"] == "FAIL")
    share_test = next(t for t in results["tests"] if t["name"].startswith("Share of Drifted Columns"))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir.mkdir(parents=True, exist_ok=True)
    html, raw = out_dir / f"drift_{stamp}.html", out_dir / f"drift_{stamp}.json"
    snapshot.save_html(str(html))
    summary = {
        "drift_detected": share_test["status"] == "FAIL",
        "drifted_columns": drifted,
        "columns_checked": len(DRIFT_COLUMNS) + 1,
        "reference_orders": len(reference),
        "current_orders": len(current),
        "html": str(html),
        "json": str(raw),
    }
    raw.write_text(json.dumps({"summary": summary, "evidently": results}, default=str, indent=1))
    return summary


def split_for_drift(orders: pd.DataFrame, train_end: pd.Timestamp, recent_days: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference: orders up to the end of the training window; current: the last `recent_days` of orders."""
    recent_start = orders["created_at"].max() - pd.Timedelta(days=recent_days)
    return orders[orders["created_at"] <= train_end], orders[orders["created_at"] >= recent_start]
