"""Delivery-business metrics of ETA predictions, overall and per slice."""

from __future__ import annotations

import numpy as np
import pandas as pd


def delivery_metrics(
    actual: np.ndarray, point: np.ndarray, lower: np.ndarray | None = None, upper: np.ndarray | None = None
) -> dict[str, float]:
    """Errors in minutes as a customer feels them; with an interval, its coverage and width."""
    error = point - actual
    absolute = np.abs(error)
    late = actual > point  # the customer waits longer than promised
    metrics = {
        "n_orders": int(len(actual)),
        "mae_min": float(absolute.mean()),
        "rmse_min": float(np.sqrt(np.mean(error**2))),
        "p50_abs_err_min": float(np.percentile(absolute, 50)),
        "p90_abs_err_min": float(np.percentile(absolute, 90)),
        "within_5_min": float(np.mean(absolute <= 5)),
        "within_10_min": float(np.mean(absolute <= 10)),
        "under_prediction_rate": float(late.mean()),
        "mean_lateness_min": float((actual - point)[late].mean()) if late.any() else 0.0,
    }
    if lower is not None and upper is not None:
        metrics["interval_coverage_80"] = float(np.mean((actual >= lower) & (actual <= upper)))
        metrics["mean_interval_width_min"] = float(np.mean(upper - lower))
    return metrics


def sliced_mae(actual: np.ndarray, point: np.ndarray, slices: pd.Series) -> dict[str, dict[str, float]]:
    """MAE and order count per value of `slices` (a market, an hour of day)."""
    frame = pd.DataFrame({"abs_err": np.abs(point - actual), "slice": slices.to_numpy()})
    grouped = frame.groupby("slice")["abs_err"].agg(["mean", "size"])
    return {str(key): {"mae_min": float(row["mean"]), "n_orders": int(row["size"])} for key, row in grouped.iterrows()}
