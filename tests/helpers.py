"""What several test modules use; plain functions and paths (conftest.py holds the fixtures)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import redis

from eta.features.definitions import STORE_HISTORY_FEATURES

SHARED_ORDERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "doordash_orders_sample.csv"


def shared_orders() -> Path:
    """The shared DoorDash sample (it lives outside the repository): missing, a CI run (`CI=true`) fails, naming
    the path, so no clone runs green with the real-data tests unrun; only a local run skips them."""
    if SHARED_ORDERS.exists():
        return SHARED_ORDERS
    missing = f"the shared DoorDash sample {SHARED_ORDERS} is missing"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(missing, pytrace=False)
    pytest.skip(f"{missing} (a local run; with CI=true this fails)")


def fixed_store_history(frame: pd.DataFrame, orders: float = 20.0, mean: float = 45.0, p90: float = 60.0) -> pd.DataFrame:
    """`frame` with every store-history feature set to one value per statistic (for tests without Feast)."""
    value = {"orders": orders, "mean_delivery_min": mean, "p90_delivery_min": p90}
    return frame.assign(**{
        name: next(v for stat, v in value.items() if name.startswith(f"store_{stat}_")) for name in STORE_HISTORY_FEATURES
    })


def start_redis_server(port: int, *options: str) -> subprocess.Popen:
    """A `redis-server` of a test's own on `port` (so the test can kill or stop it), once it answers."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *options],
                               stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60  # a start-up deadline only a broken server reaches, however slow the VM
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port).ping():
                return process
        except redis.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")
