"""Build features: recompute the offline tables, `feast apply`, materialize into the online store.

Idempotent: the tables are rewritten whole; materialization is incremental (from an overlap before
the last successful run's end) and Feast's Redis store never replaces a value with an older or
equally old one, so rerunning a window leaves Redis as it was. `full=True` re-covers all history.
Run: `python -m flows.features` or `eta features`.
"""

from __future__ import annotations

from datetime import timedelta

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from eta.feature_store import apply_definitions, feature_store, incremental_start, materialize, online_store_kind
from eta.feature_tables import write_feature_tables
from eta.settings import Settings
from eta.staleness import online_staleness
from flows.common import retry_unless_user_error, settings_with

FEATURE_VIEWS = ["store_history", "market_state"]


@task(retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_unless_user_error)
def write_tables(settings: Settings) -> dict[str, object]:
    return write_feature_tables(settings)


@task(retries=2, retry_delay_seconds=[1, 5])
def apply_and_materialize(tables: dict[str, object], settings: Settings, full: bool) -> dict[str, object]:
    """Materialize incrementally (from just before the last run's end) unless `full` or never done."""
    online = online_store_kind(settings)
    store = feature_store(settings, online)
    apply_definitions(store, settings)
    start, end = tables["start"].to_pydatetime(), tables["end"].to_pydatetime()
    resume = None if full else incremental_start(
        store, timedelta(minutes=settings.features.materialize_overlap_minutes))
    window_start = max(start, resume) if resume else start
    materialize(store, window_start, end)
    return {"online_store": online, "materialized_from": window_start, "materialized_to": end,
            "incremental": resume is not None}


@flow(name="build-features", log_prints=True)
def build_features(namespace: str | None = None, full: bool = False) -> dict[str, object]:
    settings = settings_with(namespace)
    tables = write_tables(settings)
    materialized = apply_and_materialize(tables, settings, full)
    online = materialized["online_store"]
    get_run_logger().info("features materialized into %s online store: %s", online, {**tables, **materialized})
    summary = {**tables, **materialized}
    if online == "redis":
        staleness = online_staleness(settings, FEATURE_VIEWS)
        create_table_artifact(key="online-staleness", table=staleness,
                              description="Newest event time per feature view in the online store")
        summary["staleness"] = staleness
    create_table_artifact(
        key="feature-tables",
        table=[{"measure": k, "value": str(v)} for k, v in summary.items()],
        description=f"Feast project {settings.feast_project}",
    )
    return summary


if __name__ == "__main__":
    build_features()
