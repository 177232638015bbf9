"""The DoorDash sample replayed through the loop on a simulated clock: how much does serving lose to training?

The model is trained as `make bench-accuracy` trains it (every order of the sample as history, trained on those
created before 2015-02-11), in a namespace of its own. It is promoted in a second namespace that holds what
production would have held at 2015-02-11 00:00 UTC: the orders delivered by then, their features materialized.
Then a simulated clock runs in steps of `refresh_minutes`. Within a step, every order created in it, in time
order, has its market state pushed through Feast's push source (the dispatch system's event when the order is
created) and is sent to a real `bentoml serve` of EtaOrder with its `created_at`, the app's request (no
`order_id`: the service derives it as ingestion will). At the step's end the orders delivered during it are
ingested with their actual times (the ingest flow) and the features flow rebuilds the tables and materializes
(steps with no delivery skip the refresh: it would change nothing). Once every order is delivered, the land
flow lands the prediction log and joins it with the actuals, and `eta evaluate`'s flow scores the same model on
the same orders point in time. The gap between the two MAEs is the training/serving skew of feature freshness;
`skew` says which features differ when served and what each costs.

The service's in-process feature caches (L1) keep entries for wall-clock seconds (store history 60 s, market
state 1 s); the replay runs hours of simulated time in seconds, so those TTLs would stand for hours. They are set
to 1 ms here, which is what they are next to an hourly refresh in production: no reach.

Imported by `benchmarks.monitoring`, which sets the environment (Redis db, online store) first.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from eta.features.definitions import (
    MARKET_STATE_FEATURES,
    ORDER_REQUEST_FIELDS,
    STORE_HISTORY_FEATURES,
    model_inputs,
)
from eta.features.store import feature_store, push_market_state
from eta.model.registry import load_model, promote
from eta.model.training import LABEL, training_set
from eta.orders.schema import ORDER_COLUMNS, order_ids, read_orders_file, validate_orders
from eta.serving.api import order_request
from eta.settings import PROJECT_ROOT, Settings, get_settings
from flows.evaluate import evaluate_model
from flows.features import build_features
from flows.ingest import ingest_orders
from flows.land_predictions import joined_path, land_predictions
from flows.service_process import BENTO_SOURCE, bento_server
from flows.train import train_model

ORDERS = PROJECT_ROOT.parent / "shared" / "data" / "doordash_orders_sample.csv"
REPLAY_FROM = pd.Timestamp("2015-02-11", tz="UTC")
# Wall-clock TTLs of the service's L1 caches, scaled to the simulated clock (see the module's docstring).
REPLAY_SERVICE_ENV = {"ETA_SERVING__STORE_FEATURES_TTL_S": "0.001", "ETA_SERVING__MARKET_FEATURES_TTL_S": "0.001"}


def read_sample() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The sample as text (what a file batch holds) and typed, row for row, with the id ingestion gives each
    order (`order_id`) and whether ingestion accepts it (`valid`)."""
    raw = read_orders_file(ORDERS)
    typed = raw[ORDER_COLUMNS].copy()
    for column in typed.columns:
        if column in ("created_at", "actual_delivery_time"):
            typed[column] = pd.to_datetime(typed[column], utc=True)
        elif column != "store_primary_category":
            typed[column] = pd.to_numeric(typed[column], errors="coerce")
    typed["order_id"] = order_ids(typed)
    accepted = validate_orders(raw, get_settings().validation).accepted
    return raw, typed.assign(valid=typed["order_id"].isin(accepted["order_id"]))


def train_before(namespace: str) -> dict[str, object]:
    """`eta train --orders SAMPLE --train-until 2015-02-11` in `namespace`: the model of `make bench-accuracy`."""
    ingest_orders(orders_file=str(ORDERS), namespace=namespace)
    build_features(namespace=namespace)
    return train_model(namespace=namespace, train_until=REPLAY_FROM.date().isoformat())


def _batch_file(raw: pd.DataFrame, rows: pd.Index, folder: Path, name: str) -> str:
    path = folder / f"{name}.csv"
    raw.loc[rows].to_csv(path, index=False)
    return str(path)


def replay(settings: Settings, raw: pd.DataFrame, typed: pd.DataFrame, refresh_minutes: float, until: pd.Timestamp,
           folder: Path) -> dict[str, object]:
    """Serve every order created in [REPLAY_FROM, until) on the simulated clock; refresh after each step."""
    store = feature_store(settings, "redis")
    step = pd.Timedelta(minutes=refresh_minutes)
    served = typed[(typed["created_at"] >= REPLAY_FROM) & (typed["created_at"] < until)].sort_values(
        "created_at", kind="stable")
    # Every valid order not yet held: delivered after the clock started (created before it, or during the replay).
    pending = typed[typed["valid"] & (typed["actual_delivery_time"] > REPLAY_FROM)]
    pending = pending[pending["created_at"] < until]
    answers: list[dict[str, object]] = []
    statuses: dict[str, int] = {}
    timings = {"push_s": 0.0, "request_s": 0.0, "ingest_s": 0.0, "features_s": 0.0}
    refreshes = 0
    clock = REPLAY_FROM
    log = settings.data_path / "logs" / "bench-monitoring-replay.log"
    with bento_server(BENTO_SOURCE, settings, log, env=REPLAY_SERVICE_ENV) as url, httpx.Client(base_url=url,
                                                                                               timeout=10) as client:
        while clock < until or len(pending):
            due = served[(served["created_at"] >= clock) & (served["created_at"] < clock + step)]
            for index, order in due.iterrows():
                began = time.perf_counter()
                if not pd.isna(order["market_id"]) and order[MARKET_STATE_FEATURES].notna().any():
                    push_market_state(store, due.loc[[index], ["market_id", "created_at", *MARKET_STATE_FEATURES]]
                                      .astype({"market_id": "int64"}))
                pushed = time.perf_counter()
                response = client.post("/eta/order", content=json.dumps(order_request(order)).encode(),
                                       headers={"content-type": "application/json"})
                timings["push_s"] += pushed - began
                timings["request_s"] += time.perf_counter() - pushed
                if response.status_code == 200:
                    answers.append({"row": index, "ingestion_order_id": order["order_id"], **response.json()})
                else:  # by status and the fields the order lacks
                    missing = ",".join(name for name in ORDER_REQUEST_FIELDS if pd.isna(order[name])) or "none missing"
                    reason = f"{response.status_code} ({missing})"
                    statuses[reason] = statuses.get(reason, 0) + 1
            clock += step
            delivered = pending[pending["actual_delivery_time"] <= clock]
            if len(delivered):
                pending = pending.drop(delivered.index)
                began = time.perf_counter()
                ingest_orders(orders_file=_batch_file(raw, delivered.index, folder, f"delivered-{clock:%Y%m%d%H%M}"),
                              namespace=settings.feast_project)
                ingested = time.perf_counter()
                build_features(namespace=settings.feast_project)
                timings["ingest_s"] += ingested - began
                timings["features_s"] += time.perf_counter() - ingested
                refreshes += 1
    return {"orders": len(served), "answers": pd.DataFrame(answers), "not_answered": statuses, "refreshes": refreshes,
            "timings_s": {k: round(v, 1) for k, v in timings.items()}}


def _differs(served: pd.Series, point_in_time: pd.Series) -> pd.Series:
    both_missing = served.isna() & point_in_time.isna()
    return ~(both_missing | np.isclose(served, point_in_time, rtol=1e-9, atol=1e-9, equal_nan=False))


def _mae(model, frame: pd.DataFrame, actual: np.ndarray) -> float:
    return round(float(np.mean(np.abs(model.predict(model_inputs(frame))[0] - actual))), 4)


def _minutes(values: pd.Series) -> dict[str, float] | None:
    return {"median": round(float(values.median()), 1), "p90": round(float(values.quantile(0.9)), 1),
            "max": round(float(values.max()), 1)} if len(values) else None


def view_skew(both: pd.DataFrame, view: str, features: list[str], key: str, table: pd.DataFrame, ttl: pd.Timedelta
              ) -> dict[str, object]:
    """How one feature view's values as served differ from the point-in-time ones, and why.

    A degraded answer (the online store did not answer within `serving.feature_timeout_ms`) used the last values
    the worker knew, or none: counted apart, whatever the cause.

    The service logs each vector's age when it served it, so `logged_at - age` is when the vector was made (on
    the simulated clock); the point-in-time join takes the newest row at or before the order's creation within
    the view's TTL. Where they differ: served past the TTL (the join finds nothing that recent; the online store
    keeps the last value however old), served missing (nothing online yet), served older (made before a newer
    row that was not online yet: the refresh had not run), or made at the same moment.
    """
    degraded = both["degraded"].to_numpy(dtype=bool)
    # To the second, as the orders' times are: the logged age is rounded to the millisecond.
    served_made = (pd.to_datetime(both["logged_at"], utc=True)
                   - pd.to_timedelta(both[f"{view}_age_s"], unit="s")).dt.round("s")
    rows = both[[key, "created_at"]].astype({key: "int64", "created_at": "datetime64[ns, UTC]"})
    held = table[[key, "event_timestamp"]].astype({key: "int64", "event_timestamp": "datetime64[ns, UTC]"})
    newest = pd.merge_asof(rows.reset_index().sort_values("created_at"), held.sort_values("event_timestamp"),
                           left_on="created_at", right_on="event_timestamp", by=key).set_index("index").sort_index()
    pit_made = newest["event_timestamp"].where(newest["created_at"] - newest["event_timestamp"] <= ttl)
    all_differing = np.any([_differs(both[name], both[f"{name}_pit"]) for name in features], axis=0)
    differs = all_differing & ~degraded
    served, pit = served_made.notna(), pit_made.notna()
    past_ttl, missing = differs & served & ~pit, differs & ~served & pit
    older = differs & served & pit & (served_made < pit_made)

    def minutes(values: pd.Series, rows: np.ndarray) -> dict[str, float] | None:
        return _minutes(values[rows].dt.total_seconds() / 60)

    return {
        "orders_differing": int(all_differing.sum()),
        "degraded": int((all_differing & degraded).sum()),
        "served_past_ttl": {"orders": int(past_ttl.sum()), "ttl_min": ttl.total_seconds() / 60,
                            "served_age_min": minutes(both["created_at"] - served_made, past_ttl)},
        "served_missing": int(missing.sum()),
        # The newer row came this long before the order (after the last refresh) and replaced one this much older.
        "served_older": {"orders": int(older.sum()),
                         "newer_row_before_order_min": minutes(both["created_at"] - pit_made, older),
                         "served_row_older_by_min": minutes(pit_made - served_made, older)},
        # Made at the same moment yet different: two orders of a market in the same second; Feast keeps the
        # first push (an equal event time does not overwrite), the join the last row.
        "same_event_time": int((differs & ~past_ttl & ~missing & ~older).sum()),
        "mean_abs_difference_where_both_present": {
            name: round(float((both[name] - both[f"{name}_pit"]).abs()[differs & served & pit].mean()), 3)
            for name in features} if (differs & served & pit).any() else None,
    }


def skew(joined: pd.DataFrame, point_in_time: pd.DataFrame, settings: Settings, model) -> dict[str, object]:
    """Where served features differ from the point-in-time ones on the same orders, and what each view costs in MAE.

    `joined`: the landed, joined log (features as served); `point_in_time`: the training-set rows of the same
    orders (what `eta evaluate` scores). MAEs are of the model on the served inputs with the point-in-time values
    of a view put in (no rounding: the served MAE recomputed is the first), then apart for degraded answers.
    """
    both = joined.merge(point_in_time, on="order_id", suffixes=("", "_pit"))
    actual = both["actual_minutes"].to_numpy()

    def with_pit(names: list[str], rows: pd.DataFrame = both) -> pd.DataFrame:
        return rows.assign(**{name: rows[f"{name}_pit"] for name in names})

    def answers(rows: pd.DataFrame) -> dict[str, object]:
        truth = rows["actual_minutes"].to_numpy()
        return {"orders": len(rows), "mae_served": round(float(np.mean(np.abs(rows["minutes"] - truth))), 3),
                "mae_point_in_time": _mae(model, with_pit([*STORE_HISTORY_FEATURES, *MARKET_STATE_FEATURES], rows),
                                          truth) if len(rows) else None}

    tables = {view: pd.read_parquet(settings.features_path / f"{view}.parquet")
              for view in ("store_history", "market_state")}
    ttl = settings.features
    return {
        "orders_compared": len(both),
        "not_degraded": answers(both[~both["degraded"]]),
        "degraded": answers(both[both["degraded"]]),
        "mae_served_inputs_recomputed": _mae(model, both, actual),
        "mae_point_in_time_inputs": _mae(model, with_pit([*STORE_HISTORY_FEATURES, *MARKET_STATE_FEATURES]), actual),
        "mae_point_in_time_store_history_only": _mae(model, with_pit(STORE_HISTORY_FEATURES), actual),
        "mae_point_in_time_market_state_only": _mae(model, with_pit(MARKET_STATE_FEATURES), actual),
        "store_history": view_skew(both, "store_history", STORE_HISTORY_FEATURES, "store_id", tables["store_history"],
                                   pd.Timedelta(days=ttl.store_history_ttl_days)),
        "market_state": view_skew(both, "market_state", MARKET_STATE_FEATURES, "market_id", tables["market_state"],
                                  pd.Timedelta(minutes=ttl.market_state_ttl_minutes)),
    }


def run(train_settings: Settings, settings: Settings, refresh_minutes: float, days: float | None) -> dict[str, object]:
    """The whole replay in `settings`' namespace (fresh), the model trained in `train_settings`' namespace."""
    began = time.perf_counter()
    timings: dict[str, float] = {}
    trained = train_before(train_settings.feast_project)
    tag = trained["model"]
    timings["train_s"] = round(time.perf_counter() - began, 1)
    raw, typed = read_sample()
    last = typed["created_at"].max() + pd.Timedelta(seconds=1)
    until = last if days is None else REPLAY_FROM + pd.Timedelta(days=days)
    with tempfile.TemporaryDirectory(prefix="eta-replay-") as tmp:  # batches of the sample: never in the repo
        folder = Path(tmp)
        seeded = time.perf_counter()
        held = typed[typed["actual_delivery_time"] <= REPLAY_FROM].index
        ingest_orders(orders_file=_batch_file(raw, held, folder, "held"), namespace=settings.feast_project)
        build_features(namespace=settings.feast_project, full=True)
        promote(tag, settings)
        timings["seed_s"] = round(time.perf_counter() - seeded, 1)
        replayed = replay(settings, raw, typed, refresh_minutes, until, folder)
        timings.update(replayed["timings_s"])
        landed = time.perf_counter()
        land_predictions(namespace=settings.feast_project)
        timings["land_s"] = round(time.perf_counter() - landed, 1)
        answers = replayed["answers"]
        joined = pd.read_parquet(joined_path(settings))
        joined = joined[joined["prediction_id"].isin(answers["prediction_id"])]
        labelled = joined[joined["actual_minutes"].notna()].reset_index(drop=True)
        evaluated = time.perf_counter()
        answered_rows = answers["row"].to_numpy()
        metrics = evaluate_model(orders_file=_batch_file(raw, pd.Index(answered_rows), folder, "answered"),
                                 since=REPLAY_FROM.date().isoformat(), namespace=settings.feast_project)
        timings["evaluate_s"] = round(time.perf_counter() - evaluated, 1)
    history = pd.read_parquet(settings.orders_path)
    point_in_time = training_set(feature_store(settings), history[history["order_id"].isin(labelled["order_id"])],
                                 settings.feature_service)
    point_in_time = point_in_time[["order_id", *STORE_HISTORY_FEATURES, *MARKET_STATE_FEATURES, LABEL]]
    mae_served = float((labelled["minutes"] - labelled["actual_minutes"]).abs().mean())
    timings["total_s"] = round(time.perf_counter() - began, 1)
    return {
        "orders": replayed["orders"],
        "answered": len(answers),
        "joined_share": round(len(labelled) / len(answers), 4),
        "refresh_minutes": refresh_minutes,
        "mae_served": round(mae_served, 3),
        "mae_point_in_time": round(float(metrics["mae_min"]), 3),
        "gap_share": round(mae_served / float(metrics["mae_min"]) - 1, 4),
        "joined": len(labelled),
        # The id the service derived from the request against the one ingestion derived from the file's row.
        "order_id_mismatches": int((answers["order_id"] != answers["ingestion_order_id"]).sum()),
        "evaluated_orders": int(metrics["n_orders"]),
        "not_answered": replayed["not_answered"],
        "degraded": int(joined["degraded"].sum()),
        "replayed": {"from": str(REPLAY_FROM), "until": str(until), "subset": days is not None},
        "refreshes": replayed["refreshes"],
        "model": tag,
        "model_gate": trained["gate"]["reason"],
        "service_l1_ttl_s": float(REPLAY_SERVICE_ENV["ETA_SERVING__STORE_FEATURES_TTL_S"]),
        "skew": skew(labelled, point_in_time, settings, load_model(tag)),
        "timings_s": timings,
    }
