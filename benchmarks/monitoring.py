"""`make bench-monitoring`: the feedback loop at volume and on real data; writes `benchmarks/results/monitoring.json`.

(a) The weekly report over a landed log of 200,000 predictions with actuals. Two weeks of simulated orders (5
markets, 2,500 stores, ~420k orders) go through the ingest and features flows; the train flow trains on the first
(ISO week 2026-W41), the production settings otherwise. 200,000 of the second week's orders are scored by the model as
the service would log them (features point in time, minutes and range rounded as answered, feature ages), added to
the namespace's prediction stream with XADD and landed by the land flow, which joins their actual times. Then the
report flow's work (`flows.monitor.build_weekly_report`) runs in a child process (`benchmarks.timed_report`):
`report_s` is its wall time, `report_peak_mb` the child's peak resident memory (VmHWM, imports included; the
figure before the work is given beside it).
(b) The DoorDash sample replayed through the HTTP service on a simulated clock: `benchmarks.doordash_replay`.

Redis: db 12 of the local server (ETA_BENCH_REDIS_URL to change); every namespace is the benchmark's own, emptied
at the start, its online keys and prediction stream deleted at the end. ETA_BENCH_REFRESH_MINUTES (default 60)
sets the replay's refresh; ETA_BENCH_REPLAY_DAYS replays only that many days from 2015-02-11 (default: all).
Flows run through a Prefect server of the benchmark's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date, datetime, timezone
from pathlib import Path

os.environ["ETA_REDIS_URL"] = os.environ.get("ETA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
os.environ["ETA_ONLINE_STORE"] = "redis"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import redis  # noqa: E402

from benchmarks import doordash_replay  # noqa: E402
from eta.features.definitions import (  # noqa: E402
    MARKET_STATE_FEATURES,
    ORDER_REQUEST_FIELDS,
    STORE_HISTORY_FEATURES,
    model_inputs,
)
from eta.features.store import feature_store  # noqa: E402
from eta.model.registry import load_model, promote  # noqa: E402
from eta.orders.simulate import simulate_orders  # noqa: E402
from eta.serving.prediction_log import FIELD, encode, new_prediction_id, stream_key  # noqa: E402
from eta.settings import PROJECT_ROOT, Settings, SimulationSettings, get_settings  # noqa: E402
from flows.features import build_features  # noqa: E402
from flows.ingest import ingest_orders  # noqa: E402
from flows.land_predictions import land_predictions  # noqa: E402
from flows.prefect_api import prefect_api  # noqa: E402
from flows.train import train_model  # noqa: E402
from monitoring.weekly_report import iso_week  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "monitoring.json"
REPORT_NAMESPACE = "eta_bench_monitoring"
TRAIN_NAMESPACE, REPLAY_NAMESPACE = "eta_bench_replay_train", "eta_bench_replay"
REPORT_PREDICTIONS = 200_000
# Two ISO weeks: the model learns the first (its reference, a whole week), the second is reported.
SIMULATION = SimulationSettings(markets=5, stores=2_500, days=14, orders_per_store_day=12, seed=7,
                                start=date(2026, 10, 5))
REPORT_WEEK = "2026-10-12"  # a Monday: ISO week 2026-W42
LOG_CHUNK = 50_000  # predictions in the stream at once (~1 kB each): landed before the next are added


def feature_age_s(orders: pd.DataFrame, table: pd.DataFrame, key: str) -> np.ndarray:
    """Seconds from the newest row of `table` at or before each order's creation, per `key` (NaN: none)."""
    left = orders[[key, "created_at"]].astype({key: "int64", "created_at": "datetime64[ns, UTC]"})
    right = table[[key, "event_timestamp"]].astype({key: "int64", "event_timestamp": "datetime64[ns, UTC]"})
    merged = pd.merge_asof(left.reset_index().sort_values("created_at"), right.sort_values("event_timestamp"),
                           left_on="created_at", right_on="event_timestamp", by=key).set_index("index").sort_index()
    return (merged["created_at"] - merged["event_timestamp"]).dt.total_seconds().to_numpy()


def served_records(rows: pd.DataFrame, tag: str, settings: Settings) -> list[bytes]:
    """The records the service would log for these orders (as `eta.serving.core` builds them): request, features
    as the model got them with their ages, the answer rounded as sent; logged a few ms after creation."""
    point, low, high = load_model(tag).predict(model_inputs(rows))
    created = rows["created_at"]
    ages = {
        "store_history_age_s": feature_age_s(rows, pd.read_parquet(settings.features_path / "store_history.parquet"),
                                             "store_id"),
        "market_state_age_s": feature_age_s(rows, pd.read_parquet(settings.features_path / "market_state.parquet"),
                                            "market_id"),
    }
    ages["store_history_age_s"][rows[STORE_HISTORY_FEATURES].isna().all(axis=1).to_numpy()] = np.nan
    ages["market_state_age_s"][rows[MARKET_STATE_FEATURES].isna().all(axis=1).to_numpy()] = np.nan
    frame = rows[["order_id", *ORDER_REQUEST_FIELDS, *STORE_HISTORY_FEATURES, *MARKET_STATE_FEATURES]].assign(
        prediction_id=[new_prediction_id() for _ in range(len(rows))], kind="order",
        logged_at=created.astype("int64").to_numpy() / 1e9 + 0.004, model_version=tag,
        created_at=created.dt.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        **{name: np.round(values, 3) for name, values in ages.items()},
        degraded=False, minutes=np.round(point, 2), range_low=np.round(low, 1), range_high=np.round(high, 1))
    return [encode({k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in record.items()})
            for record in frame.to_dict("records")]


def log_and_land(records: list[bytes], settings: Settings) -> dict[str, object]:
    """XADD the records to the namespace's prediction stream and land them, LOG_CHUNK at a time."""
    client = redis.Redis.from_url(settings.redis_url)
    key, landed, joined = stream_key(settings.feast_project), 0, 0
    began = time.perf_counter()
    for start in range(0, len(records), LOG_CHUNK):
        for batch in range(start, min(start + LOG_CHUNK, len(records)), 5_000):
            with client.pipeline(transaction=False) as pipe:
                for record in records[batch:min(batch + 5_000, start + LOG_CHUNK, len(records))]:
                    pipe.xadd(key, {FIELD: record})
                pipe.execute()
        summary = land_predictions(namespace=settings.feast_project)
        landed += summary["landed"]
        joined = summary["joined"]
    return {"landed": landed, "joined_last_run": joined, "log_and_land_s": round(time.perf_counter() - began, 1)}


def report_at_volume(settings: Settings) -> dict[str, object]:
    """Part (a): simulated weeks through the flows, 200,000 of the last week's orders logged, landed and reported."""
    began = time.perf_counter()
    simulated = settings.project_path / "simulated_orders.parquet"
    simulated.parent.mkdir(parents=True, exist_ok=True)
    simulate_orders(SIMULATION).to_parquet(simulated)
    ingest_orders(orders_file=str(simulated), namespace=settings.feast_project)
    build_features(namespace=settings.feast_project)
    trained = train_model(namespace=settings.feast_project, train_until=REPORT_WEEK)
    if trained["production"] is None:  # the report needs a production model; the gate's verdict is recorded
        promote(trained["model"], settings)
    setup_s = round(time.perf_counter() - began, 1)
    week = iso_week(REPORT_WEEK)
    frame = pd.read_parquet(settings.project_path / "training_set.parquet")
    in_week = frame[(frame["created_at"] >= week.start) & (frame["created_at"] < week.end)]
    if len(in_week) < REPORT_PREDICTIONS:
        raise RuntimeError(f"week {week.label} has {len(in_week)} simulated orders, expected at least "
                           f"{REPORT_PREDICTIONS}: more stores in SIMULATION")
    rows = in_week.sample(REPORT_PREDICTIONS, random_state=0).sort_values("created_at").reset_index(drop=True)
    logged = log_and_land(served_records(rows, trained["model"], settings), settings)
    child = subprocess.run([sys.executable, "-m", "benchmarks.timed_report", settings.feast_project, REPORT_WEEK],
                           cwd=PROJECT_ROOT, capture_output=True, text=True)
    if child.returncode:
        raise RuntimeError(f"the weekly report failed:\n{child.stderr[-3000:]}")
    report = json.loads(child.stdout.strip().splitlines()[-1])
    return {"simulated_orders": len(frame), "week_orders": len(in_week), "model": trained["model"],
            "model_gate": trained["gate"]["reason"], "setup_s": setup_s, **logged, **report}


@contextlib.contextmanager
def namespaces_of_our_own(*all_settings: Settings):
    """Each namespace starts empty (its data folder, the models of earlier runs); its online keys and prediction
    stream are deleted at the end (the data folder stays, to be looked at)."""
    import bentoml
    from bentoml.exceptions import NotFound

    for settings in all_settings:
        shutil.rmtree(settings.project_path, ignore_errors=True)
        with contextlib.suppress(NotFound):
            for model in bentoml.models.list(settings.model_name):
                bentoml.models.delete(model.tag)
    try:
        yield
    finally:
        for settings in all_settings:
            if (settings.project_path / "registry.db").exists():
                feature_store(settings, "redis").teardown()
            redis.Redis.from_url(settings.redis_url).delete(stream_key(settings.feast_project))


def main() -> None:
    settings = get_settings()
    refresh_minutes = float(os.environ.get("ETA_BENCH_REFRESH_MINUTES", "60"))
    days = float(os.environ["ETA_BENCH_REPLAY_DAYS"]) if os.environ.get("ETA_BENCH_REPLAY_DAYS") else None
    spaces = [settings.in_namespace(name) for name in (REPORT_NAMESPACE, TRAIN_NAMESPACE, REPLAY_NAMESPACE)]
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    began = time.perf_counter()
    with namespaces_of_our_own(*spaces), prefect_api(settings.data_path / "prefect-bench-monitoring"):
        report = report_at_volume(spaces[0])
        print(json.dumps(report, indent=2), flush=True)
        replay = doordash_replay.run(spaces[1], spaces[2], refresh_minutes, days)
    result = {
        "report_predictions": REPORT_PREDICTIONS,
        "report_s": report["report_s"],
        "report_peak_mb": report["report_peak_mb"],
        "report_peak_mb_method": "VmHWM (/proc/self/status) of the child process that ran the report, imports included",
        "report": {k: v for k, v in report.items() if k not in ("report_s", "report_peak_mb")},
        "replay": replay,
        "cores": os.cpu_count(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "total_s": round(time.perf_counter() - began, 1),
        "measured": datetime.now(timezone.utc).date().isoformat(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))
    print(f"wrote {RESULTS.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
