"""Land the prediction log into the offline store and join each prediction with what happened.

Run: `eta land [--namespace NS]` or `python -m flows.land_predictions`.

1. Spools of workers on this machine that died (`eta.serving.prediction_log`), unless a worker starting
   meanwhile shipped them, are replayed into the stream first.
2. Entries are taken from the stream `eta:predictions:<project>` through the consumer group `landing`
   (at-least-once): first those another lander read and never acknowledged (`XAUTOCLAIM` after
   `claim_idle_s`: it died), then new ones (`XREADGROUP`), at most `land_max_entries` per run.
3. They are written to `<project>/predictions/day=YYYY-MM-DD/*.parquet` (by the day of the moment they
   predict for, the request's `created_at`: the day they were logged, unless orders are replayed on a
   simulated clock),
   skipping prediction ids already landed that day, so a re-landed entry never duplicates; the file is
   fsync'd before the entries are acknowledged and deleted from the stream (`XACK` + `XDEL`). In the gcp
   profile they are appended to the BigQuery table `prediction_log.bigquery_table` as well.
4. Order predictions are joined by `order_id` with the ingested orders: `actual_minutes` (NaN until the
   order is ingested). Each day that got new predictions or still has unjoined ones is rebuilt in
   `<project>/predictions_joined/day=YYYY-MM-DD/part.parquet`, with every model input as served.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import redis
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from eta.features.definitions import (
    MARKET_STATE_FEATURES,
    MODEL_FEATURES,
    REQUEST_FIELDS,
    STORE_HISTORY_FEATURES,
    model_inputs,
)
from eta.orders.schema import delivery_minutes
from eta.serving.prediction_log import FIELD, dead_worker_spools, decode, queue_xadds, spool_records, stream_key
from eta.settings import Settings
from flows.common import retry_unless_user_error, settings_with

GROUP = "landing"
_NUMBERS = ["store_id", *[f for f in REQUEST_FIELDS if f != "created_at"], *STORE_HISTORY_FEATURES,
            *MARKET_STATE_FEATURES, "store_history_age_s", "market_state_age_s", "minutes", "range_low", "range_high"]
# One schema for every landed file, so a day's files (and all days) read back as one table.
LANDED_SCHEMA = pa.schema(
    [("prediction_id", pa.string()), ("kind", pa.string()), ("logged_at", pa.timestamp("us", tz="UTC")),
     ("order_id", pa.string()), ("model_version", pa.string()), ("created_at", pa.timestamp("us", tz="UTC")),
     *[(name, pa.float64()) for name in dict.fromkeys(_NUMBERS)], ("degraded", pa.bool_()),
     ("stores", pa.string()), ("stream_id", pa.string())]
)


def predictions_path(settings: Settings) -> Path:
    return settings.project_path / "predictions"


def joined_path(settings: Settings) -> Path:
    return settings.project_path / "predictions_joined"


def redis_connection(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_timeout=30)


def replay_dead_spools(client: redis.Redis, settings: Settings) -> int:
    """XADD the records of dead workers' spools, then delete each file (a replay cut short re-adds: idempotent)."""
    key, replayed = stream_key(settings.feast_project), 0
    for path in dead_worker_spools(settings):
        try:
            records = list(spool_records(path))
        except FileNotFoundError:  # a worker starting on this machine shipped it meanwhile
            continue
        with client.pipeline(transaction=False) as pipe:
            queue_xadds(pipe, key, records, settings.prediction_log)
            pipe.execute()
        path.unlink(missing_ok=True)
        replayed += len(records)
    return replayed


def take_entries(client: redis.Redis, settings: Settings, consumer: str) -> list[tuple[bytes, bytes]]:
    """Entries to land: this consumer's own pending ones, those of dead landers, then new ones; at most
    `land_max_entries`."""
    config, key = settings.prediction_log, stream_key(settings.feast_project)
    try:
        client.xgroup_create(key, GROUP, id="0", mkstream=True)
    except redis.ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise
    taken: dict[bytes, bytes] = {}  # by entry id: a claim may return what this consumer already read
    last = "0"  # this consumer's own unacknowledged entries first: a retried task lands what it read
    while len(taken) < config.land_max_entries:
        answer = client.xreadgroup(GROUP, consumer, {key: last},
                                   count=min(config.land_batch, config.land_max_entries - len(taken)))
        entries = answer[0][1] if answer else []
        if not entries:
            break
        last = entries[-1][0]
        taken.update((entry_id, fields[FIELD]) for entry_id, fields in entries if fields)
    start = "0-0"
    while len(taken) < config.land_max_entries:
        start, claimed, deleted = client.xautoclaim(key, GROUP, consumer, int(config.claim_idle_s * 1000), start,
                                                    count=min(config.land_batch, config.land_max_entries - len(taken)))
        if deleted:  # pending, but no longer in the stream: nothing to land
            client.xack(key, GROUP, *deleted)
        taken.update((entry_id, fields[FIELD]) for entry_id, fields in claimed if fields)
        if start in (b"0-0", "0-0"):
            break
    while len(taken) < config.land_max_entries:
        answer = client.xreadgroup(GROUP, consumer, {key: ">"},
                                   count=min(config.land_batch, config.land_max_entries - len(taken)))
        entries = answer[0][1] if answer else []
        if not entries:
            break
        taken.update((entry_id, fields[FIELD]) for entry_id, fields in entries)
    return list(taken.items())


def landed_frame(entries: list[tuple[bytes, bytes]]) -> pd.DataFrame:
    """Stream entries as rows of LANDED_SCHEMA (a quote's stores as JSON text)."""
    records = []
    for entry_id, raw in entries:
        record = decode(raw)
        if "stores" in record:
            record["stores"] = orjson.dumps(record["stores"]).decode()
        record["stream_id"] = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        records.append(record)
    frame = pd.DataFrame.from_records(records).reindex(columns=LANDED_SCHEMA.names)
    # Microseconds, as the service's clock and the schema keep them (a float of seconds carries ns noise).
    frame["logged_at"] = pd.to_datetime(frame["logged_at"], unit="s", utc=True).dt.round("us")
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, format="ISO8601").dt.round("us")
    frame[list(dict.fromkeys(_NUMBERS))] = frame[list(dict.fromkeys(_NUMBERS))].astype(float)
    frame["degraded"] = frame["degraded"].astype(bool)
    return frame


def _durable_parquet(frame: pd.DataFrame, path: Path, schema: pa.Schema | None = None) -> None:
    """Written beside, fsync'd, renamed, and the folder fsync'd: once this returns the file survives a crash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), tmp)
    with tmp.open("rb") as written:
        os.fsync(written.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def _day_files(root: Path, day: str) -> list[Path]:
    return sorted((root / f"day={day}").glob("*.parquet"))


def write_landed(frame: pd.DataFrame, settings: Settings) -> dict[str, object]:
    """Each day's new prediction ids in one file of that day; ids already landed (or twice in the batch) skipped."""
    root, landed, days = predictions_path(settings), 0, []
    frame = frame.assign(_day=frame["created_at"].fillna(frame["logged_at"]).dt.strftime("%Y-%m-%d"))
    for day, rows in frame.groupby("_day"):
        held = _day_files(root, day)
        known = set(pq.read_table(held, columns=["prediction_id"]).column(0).to_pylist()) if held else set()
        new = rows[~rows["prediction_id"].isin(known)].drop_duplicates("prediction_id").drop(columns="_day")
        if len(new):
            name = f"{new['stream_id'].min().replace('-', '_')}-{uuid.uuid4().hex[:8]}.parquet"
            _durable_parquet(new, root / f"day={day}" / name, LANDED_SCHEMA)
            landed += len(new)
            days.append(day)
    return {"landed": landed, "duplicates_skipped": len(frame) - landed, "days": days}


def acknowledge(client: redis.Redis, settings: Settings, entry_ids: list[bytes]) -> None:
    """Landed: acknowledged and deleted from the stream (only now: the Parquet is on disk)."""
    key = stream_key(settings.feast_project)
    for start in range(0, len(entry_ids), 10_000):
        chunk = entry_ids[start:start + 10_000]
        with client.pipeline(transaction=False) as pipe:
            pipe.xack(key, GROUP, *chunk)
            pipe.xdel(key, *chunk)
            pipe.execute()


def land_in_bigquery(frame: pd.DataFrame, settings: Settings) -> int:
    """gcp profile: append the batch's predictions not yet in the table (ids checked first: idempotent)."""
    from google.api_core.exceptions import NotFound
    from google.cloud import bigquery

    from eta.orders.bigquery import bigquery_client

    config = settings.gcp
    client = bigquery_client(config)
    table = f"{config.project}.{config.dataset}.{settings.prediction_log.bigquery_table}"
    ids = frame["prediction_id"].tolist()
    try:
        job = bigquery.QueryJobConfig(query_parameters=[bigquery.ArrayQueryParameter("ids", "STRING", ids)])
        held = {row[0] for row in client.query(
            f"SELECT prediction_id FROM `{table}` WHERE prediction_id IN UNNEST(@ids)", job_config=job).result()}
    except NotFound:  # the first landing creates the table
        held = set()
    new = frame[~frame["prediction_id"].isin(held)]
    if len(new):
        client.load_table_from_dataframe(new, table, job_config=bigquery.LoadJobConfig(
            write_disposition="WRITE_APPEND")).result()
    return len(new)


def days_to_join(settings: Settings, landed_days: list[str]) -> list[str]:
    """Days that got new predictions, and days whose joined file still has a prediction without its actual."""
    days = set(landed_days)
    for path in joined_path(settings).glob("day=*/part.parquet"):
        if pq.read_table(path, columns=["actual_minutes"]).to_pandas()["actual_minutes"].isna().any():
            days.add(path.parent.name.removeprefix("day="))
    return sorted(days)


def join_day(settings: Settings, day: str, actuals: pd.DataFrame) -> dict[str, int]:
    """One day's order predictions with every model input as served and `actual_minutes` where the order is in."""
    files = _day_files(predictions_path(settings), day)
    landed = pq.read_table(files, schema=LANDED_SCHEMA).to_pandas()
    orders = landed[landed["kind"] == "order"].drop(columns=["stores", "stream_id"]).reset_index(drop=True)
    if not len(orders):
        return {"joined": 0, "unjoined": 0}
    inputs = model_inputs(orders)
    served = pd.DataFrame(inputs, columns=MODEL_FEATURES)
    orders[[f for f in MODEL_FEATURES if f not in orders.columns]] = served[[f for f in MODEL_FEATURES
                                                                            if f not in orders.columns]]
    joined = orders.merge(actuals, on="order_id", how="left")
    joined = joined.sort_values(["logged_at", "prediction_id"], kind="stable").reset_index(drop=True)
    _durable_parquet(joined, joined_path(settings) / f"day={day}" / "part.parquet")
    unjoined = int(joined["actual_minutes"].isna().sum())
    return {"joined": len(joined) - unjoined, "unjoined": unjoined}


def order_actuals(settings: Settings) -> pd.DataFrame:
    """Each ingested order's id and delivery minutes (the label)."""
    if not settings.orders_path.exists():
        return pd.DataFrame({"order_id": pd.Series(dtype=object), "actual_minutes": pd.Series(dtype=float)})
    orders = pd.read_parquet(settings.orders_path, columns=["order_id", "created_at", "actual_delivery_time"])
    return pd.DataFrame({"order_id": orders["order_id"], "actual_minutes": delivery_minutes(orders)}
                        ).drop_duplicates("order_id")


@task(retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_unless_user_error)
def land(settings: Settings) -> dict[str, object]:
    client = redis_connection(settings)
    try:
        replayed = replay_dead_spools(client, settings)
        entries = take_entries(client, settings, f"lander-{socket.gethostname()}-{os.getpid()}")
        landed: dict[str, object] = {"landed": 0, "duplicates_skipped": 0, "days": []}
        if entries:
            frame = landed_frame(entries)
            landed = write_landed(frame, settings)
            if settings.profile == "gcp":
                landed["bigquery_appended"] = land_in_bigquery(frame, settings)
            acknowledge(client, settings, [entry_id for entry_id, _ in entries])
        return {"spool_replayed": replayed, "entries_taken": len(entries), **landed,
                "stream_left": client.xlen(stream_key(settings.feast_project))}
    finally:
        client.close()


@task
def join(settings: Settings, landed_days: list[str]) -> dict[str, int]:
    actuals = order_actuals(settings)
    counts = {"days_joined": 0, "joined": 0, "unjoined": 0}
    for day in days_to_join(settings, landed_days):
        for name, value in join_day(settings, day, actuals).items():
            counts[name] += value
        counts["days_joined"] += 1
    return counts


@flow(name="land-predictions", log_prints=True, timeout_seconds=1800)
def land_predictions(namespace: str | None = None) -> dict[str, object]:
    settings = settings_with(namespace)
    landed = land(settings)
    joined = join(settings, landed["days"])
    summary = {**{k: v for k, v in landed.items() if k != "days"}, **joined,
               "predictions": str(predictions_path(settings)), "predictions_joined": str(joined_path(settings))}
    get_run_logger().info("landed %s (duplicates skipped %s), joined %s, unjoined %s, spool replayed %s",
                          summary["landed"], summary["duplicates_skipped"], summary["joined"], summary["unjoined"],
                          summary["spool_replayed"])
    rows = "\n".join(f"| {name} | {summary[name]} |" for name in
                     ("landed", "duplicates_skipped", "joined", "unjoined", "spool_replayed", "stream_left"))
    create_markdown_artifact(key="prediction-landing", markdown=(
        "| count | value |\n|---|---|\n" + rows + f"\n\nLanded log: `{summary['predictions']}`; "
        f"joined with actuals (rebuilt days only): `{summary['predictions_joined']}`"))
    return summary


if __name__ == "__main__":
    land_predictions()
