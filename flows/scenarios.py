"""Scenarios that prove the feedback loop: a simulated world, changed or not, lived day by day through the real loop.

A world runs in a namespace of its own (Feast project, data folder, models). Its orders up to its first served
day are ingested at once (long enough for every store-history window to fill), features built and a model trained
and promoted by the train flow. From then on the runner is the world's clock, one simulated day at a time:

1. every order created that day, in time order, has its market's state written to the online store (the dispatch
   system's event when an order is created) and is sent to a real `bentoml serve` of EtaOrder as the app sends it:
   the order's fields, its order time and the app's `order_id`;
2. at the day's end, the orders delivered that day are ingested with their actual times (the ingest flow) and the
   features flow refreshes the feature tables and the online store;
3. after a week's last day the feedback flow lands the prediction log, joins it with the actual times, reports the
   ISO week and decides on retraining; a retrain it triggers runs the `train-model/retrain` deployment, served by a
   Prefect runner process (`retrain_runner`). Once the retrain is done the service is started again: a serving
   process takes the production model when it starts.

The service's in-process feature caches keep entries for wall-clock seconds (store history 60 s, market state 1 s)
and its feature budget is 8 ms; a simulated day passes in seconds on a shared machine, so the runner gives the
service 1 ms caches (what 1 s is next to a day) and a budget no stall overruns: every answer carries the features
the online store held for it, as production answers do (`degraded` answers are counted).

Used by `benchmarks/scenarios.py` (`make scenarios`) and `tests/test_scenarios.py`; the caller sets the environment
(data folder, Redis, Prefect API) before importing eta.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import redis
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from prefect import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.sorting import FlowRunSort

from eta.features.definitions import MARKET_STATE_FEATURES, MODEL_FEATURES, model_inputs
from eta.features.store import feature_store
from eta.model.registry import list_models, load_model, model_metadata, production_tag
from eta.model.training import LABEL
from eta.orders.simulate import simulate_orders
from eta.serving.api import order_request
from eta.serving.prediction_log import stream_key
from eta.settings import Settings, SimulationSettings
from flows.common import settings_with
from flows.features import build_features
from flows.feedback import feedback_loop
from flows.ingest import ingest_orders
from flows.land_predictions import joined_path, land_predictions
from flows.processes import free_port, server_process
from flows.service_process import BENTO_SOURCE, bento_server
from flows.train import train_model

# Wall-clock caches and budgets scaled to the simulated clock (see the module's docstring).
SERVICE_ENV = {"ETA_SERVING__STORE_FEATURES_TTL_S": "0.001", "ETA_SERVING__MARKET_FEATURES_TTL_S": "0.001",
               "ETA_SERVING__FEATURE_TIMEOUT_MS": "1000"}
DAY = pd.Timedelta(days=1)
RETRAIN_TIMEOUT_S = 1800  # a hang guard: a retrain on a busy machine takes well under a minute


@dataclass
class World:
    """One namespace's simulated world: all its orders (with the app's ids) and how far its clock has run."""

    namespace: str
    simulation: SimulationSettings
    orders: pd.DataFrame
    folder: Path  # the ingest batches
    ingested_until: pd.Timestamp
    answers: list[dict[str, object]] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return settings_with(self.namespace)

    def day(self, number: int) -> pd.Timestamp:
        """Midnight (UTC) starting the world's day `number` (0: the simulation's first)."""
        return pd.Timestamp(self.simulation.start, tz="UTC") + number * DAY

    def reached(self, frame: pd.DataFrame) -> np.ndarray:
        return reached(self.simulation, frame)


def reached(simulation: SimulationSettings, frame: pd.DataFrame) -> np.ndarray:
    """Which rows of `frame` (orders, or logged answers) the simulation's changes reach; all, when it has none."""
    reach = np.ones(len(frame), dtype=bool)
    for change in simulation.changes:
        if change.kind == "new_stores":  # the simulator opens the last `size` share of stores
            reach &= (frame["store_id"] - 1 >= simulation.stores * (1 - change.size)).to_numpy()
        elif change.market is not None:
            reach &= (frame["market_id"] == change.market).to_numpy()
    return reach


def app_orders(simulation: SimulationSettings, namespace: str) -> pd.DataFrame:
    """The simulated orders with the ids the app gives them (the same for the request and the ingested order)."""
    orders = simulate_orders(simulation)
    return orders.assign(order_id=[f"{namespace}-{i}" for i in range(len(orders))])


def open_world(namespace: str, simulation: SimulationSettings, first_day: int, folder: Path) -> tuple[World, dict]:
    """The world's orders delivered before `first_day` ingested, features built, a model trained and promoted."""
    folder.mkdir(parents=True, exist_ok=True)
    world = World(namespace, simulation, app_orders(simulation, namespace), folder,
                  pd.Timestamp(simulation.start, tz="UTC"))
    refresh(world, world.day(first_day))
    trained = train_model(namespace=namespace)
    if trained["production"] is None:
        raise RuntimeError(f"{namespace}: the first model did not pass the gate ({trained['gate']['reason']})")
    return world, trained


def refresh(world: World, until: pd.Timestamp) -> dict[str, object]:
    """Ingest the orders delivered before `until` not ingested yet (the ingest flow), then the features flow."""
    delivered = world.orders["actual_delivery_time"]
    batch = world.orders[(delivered >= world.ingested_until) & (delivered < until)]
    path = world.folder / f"delivered-before-{until:%Y%m%dT%H%M}.parquet"
    batch.to_parquet(path, index=False)
    ingested = ingest_orders(orders_file=str(path), namespace=world.namespace)
    world.ingested_until = until
    build_features(namespace=world.namespace)
    return ingested


class MarketStateWriter:
    """Writes a market's state to the online store the way Feast's push does, at the rate orders come in.

    `FeatureStore.push` re-reads the registry and converts a DataFrame on every call (25-60 ms of Python here): a
    week of orders would take minutes. This resolves the view once and calls the same provider write `push` ends
    in (Feast's Redis store, which keeps the newer of two states).
    """

    def __init__(self, settings: Settings) -> None:
        store = feature_store(settings, "redis")
        self.config = store.config
        self.view = store.get_feature_view("market_state")
        self.provider = store._get_provider()  # noqa: SLF001 - Feast's own write path, without push's per-call work

    def write(self, market_id: int, moment: pd.Timestamp, state: tuple[float, ...]) -> None:
        key = EntityKey(join_keys=["market_id"], entity_values=[Value(int64_val=int(market_id))])
        values = {name: Value(double_val=float(value)) for name, value in zip(MARKET_STATE_FEATURES, state)}
        self.provider.online_write_batch(self.config, self.view, [(key, values, moment.to_pydatetime(), None)], None)


@contextlib.contextmanager
def serving(world: World, log_folder: Path) -> Iterator[str]:
    """EtaOrder served from source on the namespace's production model (the one production points at now)."""
    with bento_server(BENTO_SOURCE, world.settings, log_folder / f"bento-{world.namespace}.log", env=SERVICE_ENV) as url:
        yield url


def serve_day(world: World, url: str, writer: MarketStateWriter, day: pd.Timestamp) -> None:
    """The day's orders in time order, each after its market state's write; answers kept in `world.answers`."""
    created = world.orders["created_at"]
    orders = world.orders[(created >= day) & (created < day + DAY)]
    states = orders[MARKET_STATE_FEATURES].to_numpy(dtype=float)
    with httpx.Client(base_url=url, timeout=30) as client:
        for i, order in enumerate(orders.to_dict("records")):
            writer.write(order["market_id"], order["created_at"], tuple(states[i]))
            answer = client.post("/eta/order", json=order_request(order, order["order_id"])).raise_for_status().json()
            world.answers.append({key: answer[key] for key in ("order_id", "prediction_id", "minutes", "degraded",
                                                               "model_version")})


def live_week(world: World, url: str, monday: pd.Timestamp, days: int = 7) -> dict[str, float]:
    """A week's days (or its first `days`): each day's orders served, then the day's deliveries ingested and the
    features refreshed. Returns the seconds spent serving and refreshing, the orders answered and how many degraded."""
    writer = MarketStateWriter(world.settings)
    spent = {"serve_s": 0.0, "refresh_s": 0.0}
    answered = len(world.answers)
    for offset in range(days):
        day = monday + offset * DAY
        began = time.perf_counter()
        serve_day(world, url, writer, day)
        served = time.perf_counter()
        refresh(world, day + DAY)
        spent["serve_s"] += served - began
        spent["refresh_s"] += time.perf_counter() - served
    return {**{name: round(seconds, 1) for name, seconds in spent.items()},
            "answered": len(world.answers) - answered,
            "degraded": sum(answer["degraded"] for answer in world.answers[answered:])}


def await_flow_run(run_id: str, timeout_s: float = RETRAIN_TIMEOUT_S) -> str:
    """Wait for a flow run to end; its final state's name."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                return run.state.name
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {run_id} still {run.state.name if run.state else 'unknown'} "
                                   f"after {timeout_s:.0f} s")
            time.sleep(1)


def week_answers(settings: Settings, monday: pd.Timestamp) -> pd.DataFrame:
    """The week's order answers from the landed, joined log, with their actual minutes (NaN until ingested)."""
    folder = joined_path(settings)
    days = [f"{monday + offset * DAY:%Y-%m-%d}" for offset in range(7)]
    files = [path for day in days for path in sorted((folder / f"day={day}").glob("*.parquet"))]
    joined = pd.concat([pd.read_parquet(path) for path in files], ignore_index=True)
    return joined[joined["kind"] == "order"].reset_index(drop=True)


def mae(frame: pd.DataFrame, points: np.ndarray | None = None) -> float | None:
    """Mean absolute error in minutes of the answers with an actual (their own points, or `points` for those rows)."""
    labelled = frame["actual_minutes"].notna().to_numpy()
    if not labelled.any():
        return None
    point = frame["minutes"].to_numpy() if points is None else points
    return round(float(np.mean(np.abs(point[labelled] - frame["actual_minutes"].to_numpy()[labelled]))), 3)


def model_points(tag: str, frame: pd.DataFrame) -> np.ndarray:
    """What model `tag` answers for the logged orders, from the features they were served with."""
    return load_model(tag).predict(frame[MODEL_FEATURES].to_numpy(dtype=float))[0]


@contextlib.contextmanager
def retrain_runner(log_path: Path) -> Iterator[None]:
    """`train-model/retrain` served by a Prefect runner process (`prefect flow serve`), as prefect.yaml's
    deployment of the same name is run by a worker: each run in a subprocess of its own."""
    port = free_port()
    env = {**os.environ, "PREFECT_RUNNER_SERVER_ENABLE": "true", "PREFECT_RUNNER_SERVER_PORT": str(port),
           "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    command = [str(Path(sys.executable).with_name("prefect")), "flow", "serve", "flows/train.py:train_model",
               "--name", "retrain"]
    with server_process(command, f"http://127.0.0.1:{port}/health", env, log_path):
        yield


def feedback_week(world: World, monday: pd.Timestamp) -> dict[str, object]:
    """The feedback flow on the ISO week starting `monday`, a retrain it triggers awaited; what it found, in short."""
    before = production_tag(world.settings)
    result = feedback_loop(namespace=world.namespace, week=f"{monday:%Y-%m-%d}")
    report, decision = result["report"], result["decision"]
    retrain = await_flow_run(result["retrain_run"]) if result["retrain_run"] else None
    after = production_tag(world.settings)
    return {
        "week": report["week"], "orders": report["orders"], "labelled_orders": report["labelled_orders"],
        "mae": round(report["mae_min"], 3), "held_out_mae": round(model_metadata(before)["metrics"]["mae_min"], 3),
        "coverage": round(report["interval_coverage_80"], 3),
        "under_prediction_rate": round(report["under_prediction_rate"], 3),
        "by_market": {market: {name: round(numbers[name], 3) for name in ("mae_min", "under_prediction_rate",
                                                                          "interval_coverage_80")}
                      for market, numbers in report["by_market"].items()},
        "drifted_features": report["drifted_features"],
        "prediction_drift": report["prediction_drift"], "breaches": decision["breaches"],
        "retrain_triggered": decision["trigger"], "held_back": decision["held_back"], "retrain_run_state": retrain,
        "model": before, "promoted": after if after != before else None,
        "report_s": flow_run_seconds("weekly-report", namespace=world.namespace, week=f"{monday:%Y-%m-%d}"),
    }


def flow_run_seconds(flow_name: str, **parameters: object) -> float:
    """How long the newest run of `flow_name` with these parameters ran, as Prefect recorded it."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=50)
    run = next(run for run in runs if all(run.parameters.get(k) == v for k, v in parameters.items()))
    return round(run.total_run_time.total_seconds(), 1)


def live_weeks(world: World, monday: pd.Timestamp, weeks: int, log_folder: Path) -> list[dict[str, object]]:
    """`weeks` weeks lived from `monday`, each closed by the feedback flow; the service restarts on a promoted model."""
    verdicts: list[dict[str, object]] = []
    while len(verdicts) < weeks:
        with serving(world, log_folder) as url:
            while len(verdicts) < weeks:
                week = monday + len(verdicts) * 7 * DAY
                spent = live_week(world, url, week)
                verdicts.append({**feedback_week(world, week), **spent})
                if verdicts[-1]["promoted"]:
                    break
    return verdicts


def live_change(world: World, monday: pd.Timestamp, log_folder: Path) -> dict[str, object]:
    """A changed world's two weeks from its change on `monday`: the first closed by the feedback flow (which may
    retrain and promote), the second served by the production model that left. MAEs on the orders the change
    reaches: as served; on the retrained model's held-out days (changed days neither model learned from), old
    model against new; and on the second week, from the features it was served with, old model against new."""
    first_model = production_tag(world.settings)
    with serving(world, log_folder) as url:
        spent = [live_week(world, url, monday)]
    verdict = feedback_week(world, monday)
    retrained = newest_model(world.settings) if verdict["retrain_triggered"] else None
    holdout = held_out_days(world, first_model, retrained["model"]) if retrained else None
    following = monday + 7 * DAY
    with serving(world, log_folder) as url:
        spent.append(live_week(world, url, following))
    land_predictions(namespace=world.namespace)
    changed, after = (week_answers(world.settings, week) for week in (monday, following))
    changed, after = (frame[world.reached(frame)].reset_index(drop=True) for frame in (changed, after))
    new_model = verdict["promoted"]
    return {
        "drift_detected": bool(verdict["drifted_features"] or verdict["prediction_drift"]),
        # Decay: the quality rules (MAE past its margin, range coverage out of band, orders running late).
        "decay_detected": any(not breach.startswith("drift") for breach in verdict["breaches"]),
        "retrain_triggered": verdict["retrain_triggered"],
        "promoted": new_model,
        "mae_changed_old_model": mae(changed),
        "mae_changed_new_model": holdout["new_model"] if holdout else None,
        "holdout": holdout,
        "next_week": {"orders": len(after), "served_by": "new model" if new_model else "old model",
                      "old_model": mae(after, model_points(first_model, after)),
                      "new_model": mae(after) if new_model else None},
        "first_week_orders": len(changed),
        "first_report": verdict,
        "retrained": retrained,
        "weeks_spent_s": spent,
    }


def held_out_days(world: World, old: str, new: str) -> dict[str, object]:
    """Old and new model on the reached orders of the new model's held-out days, from the training set the retrain
    built (point in time): changed days that neither model learned from, as the gate compares them."""
    window = model_metadata(new)["window"]
    frame = pd.read_parquet(world.settings.project_path / "training_set.parquet")
    days = frame[(frame["created_at"] >= pd.Timestamp(window["holdout_start"]))
                 & (frame["created_at"] <= pd.Timestamp(window["holdout_end"]))]
    days = days[world.reached(days)].reset_index(drop=True)
    actual = days[LABEL].to_numpy()

    def error(tag: str) -> float:
        return round(float(np.mean(np.abs(load_model(tag).predict(model_inputs(days))[0] - actual))), 3)

    return {"from": window["holdout_start"], "to": window["holdout_end"], "orders": len(days),
            "old_model": error(old), "new_model": error(new)}


def newest_model(settings: Settings) -> dict[str, object]:
    """The namespace's newest model: its held-out MAE against the champion's on the same window, and the gate."""
    tag = list_models(settings)[0]["tag"]
    meta = model_metadata(tag)
    champion = meta["champion"]["metrics"] or {}
    return {"model": tag, "window": meta["window"], "gate": meta["gate"]["reason"], "promoted": meta["gate"]["promote"],
            "holdout_mae": round(meta["metrics"]["mae_min"], 3),
            "champion_holdout_mae": round(champion["mae_min"], 3) if champion else None}


def drop_namespace(settings: Settings) -> None:
    """The namespace's online features and prediction stream, out of Redis (its files stay with the data folder)."""
    if (settings.project_path / "registry.db").exists():
        feature_store(settings, "redis").teardown()
    redis.Redis.from_url(settings.redis_url).delete(stream_key(settings.feast_project))
