"""Feast configuration built from settings, and the operations flows and the service run on the store."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import pandas as pd
import redis
from feast import FeatureStore, FileSource, RepoConfig
from feast.data_source import PushMode
from feast.repo_operations import apply_total_with_repo_instance, parse_repo

from eta.features.definitions import market_state
from eta.settings import PROJECT_ROOT, Settings
from eta.storage import write_table

FEATURE_REPO = PROJECT_ROOT / "feature_repo"
MARKET_STATE_PUSH = "market_state_push"  # the PushSource's name in feature_repo/definitions.py
OnlineStore = Literal["redis", "sqlite"]


def redis_connection(settings: Settings) -> redis.Redis | redis.RedisCluster:
    """A client of the online store's Redis, single node or cluster, TLS and password from the URL."""
    if settings.redis_type == "redis_cluster":
        return redis.RedisCluster.from_url(settings.redis_url)
    return redis.Redis.from_url(settings.redis_url)


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def online_store_kind(settings: Settings) -> OnlineStore:
    """The online store to use: the configured one, or for `auto` Redis when it answers."""
    if settings.online_store != "auto":
        return settings.online_store
    return "redis" if redis_answers(settings.redis_url) else "sqlite"


def feast_redis_connection_string(url: str) -> str:
    """Feast's `host:port,db=N,password=...,ssl=true` form of a redis:// or rediss:// URL."""
    parsed = urlparse(url)
    parts = [f"{parsed.hostname or 'localhost'}:{parsed.port or 6379}"]
    db = parsed.path.lstrip("/")
    if db:
        parts.append(f"db={int(db)}")
    if parsed.password:
        parts.append(f"password={parsed.password}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def feature_store_yaml(settings: Settings, online: OnlineStore) -> dict[str, object]:
    """The namespace's Feast configuration, as `feature_store.yaml` holds it (for `feast serve` and the CLI)."""
    if online == "redis":
        online_store = {"type": "redis", "redis_type": settings.redis_type,
                        "connection_string": feast_redis_connection_string(settings.redis_url)}
    else:
        online_store = {"type": "sqlite", "path": str(settings.project_path / "online_store.db")}
    offline_store: dict[str, object] = {"type": "duckdb"}
    if settings.profile == "gcp":
        gcp = settings.gcp
        offline_store = {"type": "bigquery", "project_id": gcp.project, "dataset": gcp.dataset, "location": gcp.location}
    return {
        "project": settings.feast_project,
        "provider": "gcp" if settings.profile == "gcp" else "local",
        "registry": str(settings.project_path / "registry.db"),
        "online_store": online_store,
        "offline_store": offline_store,
        "entity_key_serialization_version": 3,
    }


def repo_config(settings: Settings, online: OnlineStore) -> RepoConfig:
    return RepoConfig(**feature_store_yaml(settings, online), repo_path=str(FEATURE_REPO))


def feature_store(settings: Settings, online: OnlineStore | None = None) -> FeatureStore:
    settings.project_path.mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=repo_config(settings, online or online_store_kind(settings)))


@contextlib.contextmanager
def _inside(path: Path) -> Iterator[None]:
    """Feast's repo parser resolves definition modules against the working directory."""
    cwd = os.getcwd()
    sys.path.insert(0, str(path))
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(cwd)
        sys.path.remove(str(path))


def apply_definitions(store: FeatureStore, settings: Settings) -> None:
    """`feast apply` for the feature repo: register definitions, create online tables, drop removed ones."""
    with _inside(FEATURE_REPO):
        # Definitions read settings when imported: re-import them so they reflect the current ones.
        for module in [p.stem for p in FEATURE_REPO.glob("*.py")]:
            sys.modules.pop(module, None)
        repo = parse_repo(FEATURE_REPO)
    for source in repo.data_sources:
        if isinstance(source, FileSource) and not Path(source.path).is_absolute():
            source.file_options.uri = str(settings.features_path / source.path)
    apply_total_with_repo_instance(
        store, store.config.project, store.registry, repo, skip_source_validation=False
    )


def push_market_state(store: FeatureStore, orders: pd.DataFrame) -> int:
    """Push each market's newest state in `orders` to the online store; returns how many markets.

    Online through Feast's push source (an older state never overwrites a newer one: Feast compares event
    times); the offline half is `append_market_state_offline`.
    """
    latest = market_state(orders).groupby("market_id").tail(1)
    store.push(MARKET_STATE_PUSH, latest, to=PushMode.ONLINE)
    return len(latest)


def append_market_state_offline(settings: Settings, orders: pd.DataFrame) -> int:
    """The offline half of the push: add the batch's market states to the push source's batch table.

    Written by us, not by `store.push(..., to=OFFLINE)`: Feast 0.67's DuckDB offline push writes the
    event time as text, which breaks later joins. Same rows the features flow would compute, so its
    next full rebuild changes nothing; rows already held are not added twice.
    """
    path = settings.features_path / "market_state.parquet"
    fresh = market_state(orders)
    held = pd.read_parquet(path) if path.exists() else fresh.iloc[:0]
    merged = pd.concat([held, fresh], ignore_index=True)
    merged["event_timestamp"] = pd.to_datetime(merged["event_timestamp"], utc=True)
    merged = merged.drop_duplicates(["market_id", "event_timestamp"], keep="last").sort_values("event_timestamp")
    write_table(merged.reset_index(drop=True), path)
    return len(merged) - len(held)


def can_push_market_state(store: FeatureStore) -> bool:
    """Whether `feast apply` has registered the push source yet (not before the first features run, nor
    in a registry applied by a version without it: the next features run applies it)."""
    if not Path(store.config.registry.path).exists():
        return False
    return any(source.name == MARKET_STATE_PUSH for source in store.list_data_sources())


def materialize(store: FeatureStore, start: datetime, end: datetime) -> None:
    """Load every feature view's latest values in [start, end] into the online store; rerunning is harmless."""
    store.materialize(start_date=start, end_date=end)


def incremental_start(store: FeatureStore, overlap: timedelta) -> datetime | None:
    """Where the next materialization starts: `overlap` before the earliest view's last successful end.

    None while some view was never materialized (then a full run is due). Feast records an interval
    only when a materialization succeeds, so a failed run is retried from the same start: no gap. Rows
    already online with the same event time are skipped by Feast's Redis store, so the overlap is free.
    """
    ends = []
    for view in store.list_feature_views():
        if not view.materialization_intervals:
            return None
        ends.append(max(end for _, end in view.materialization_intervals))
    return min(ends) - overlap if ends else None
