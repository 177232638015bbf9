"""Monitoring tests: the drift report sees a real shift and stays quiet without one."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from eta.orders.simulate import simulate_orders
from eta.settings import SimulationSettings
from monitoring.drift import drift_report


def _two_weeks(seed: int) -> pd.DataFrame:
    return simulate_orders(SimulationSettings(markets=2, stores=30, days=7, seed=seed))


def test_a_shift_in_drive_times_and_kitchen_load_is_reported(tmp_path: Path):
    reference, current = _two_weeks(1), _two_weeks(2)
    shifted = current.assign(
        estimated_store_to_consumer_driving_duration=current["estimated_store_to_consumer_driving_duration"] * 1.6,
        total_items=current["total_items"] + 3,
        actual_delivery_time=current["actual_delivery_time"] + pd.Timedelta(minutes=15),
    )
    summary = drift_report(reference, shifted, tmp_path)
    assert {"estimated_store_to_consumer_driving_duration", "total_items", "delivery_minutes"} <= set(
        summary["drifted_columns"]
    )
    assert Path(summary["html"]).exists() and Path(summary["json"]).exists()


def test_same_marketplace_other_week_is_not_dataset_drift(tmp_path: Path):
    summary = drift_report(_two_weeks(1), _two_weeks(2), tmp_path)
    assert summary["drift_detected"] is False
    assert "estimated_store_to_consumer_driving_duration" not in summary["drifted_columns"]
