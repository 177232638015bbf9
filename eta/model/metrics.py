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


def sliced_metrics(
    actual: np.ndarray, point: np.ndarray, lower: np.ndarray, upper: np.ndarray, slices: pd.Series
) -> dict[str, dict[str, float]]:
    """Per value of `slices` (a market, an hour of day): orders, MAE, and the range's coverage and mean width.

    The order count is given as both `n` and `n_orders` (the name earlier models' metadata uses).
    """
    frame = pd.DataFrame({
        "abs_err": np.abs(point - actual),
        "covered": (actual >= lower) & (actual <= upper),
        "width": upper - lower,
        "slice": slices.to_numpy(),
    })
    grouped = frame.groupby("slice").agg(
        n=("abs_err", "size"), mae=("abs_err", "mean"), covered=("covered", "mean"), width=("width", "mean")
    )
    return {
        str(key): {"n": int(row["n"]), "n_orders": int(row["n"]), "mae_min": float(row["mae"]),
                   "interval_coverage_80": float(row["covered"]), "mean_interval_width_min": float(row["width"])}
        for key, row in grouped.iterrows()
    }
