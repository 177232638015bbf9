"""Build features: recompute the offline tables, `feast apply`, materialize into the online store.

Idempotent: the tables are rewritten whole; materialization is incremental (from an overlap before
the last successful run's end) and Feast's Redis store never replaces a value with an older or
equally old one, so rerunning a window leaves Redis as it was. `full=True` re-covers all history;
`start`/`end` (a backfill) materialize exactly that range, for example after orders of past days arrived late.
Run: `python -m flows.features` or `eta features`; a backfill through the `features-backfill` deployment.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from eta.errors import UsageError
from eta.features.staleness import online_staleness
from eta.features.store import apply_definitions, feature_store, incremental_start, materialize, online_store_kind
from eta.features.tables import write_feature_tables
from eta.settings import Settings
from flows.common import retry_unless_user_error, settings_with

FEATURE_VIEWS = ["store_history", "market_state"]


@task(retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_unless_user_error)
def write_tables(settings: Settings) -> dict[str, object]:
    return write_feature_tables(settings)


def backfill_window(
    start: datetime | None, end: datetime | None, held: tuple[datetime, datetime]
) -> tuple[datetime, datetime]:
    """A backfill's range: `start`/`end` in UTC (a date is its midnight); the held orders' ends stand in for either."""
    def utc(moment: datetime) -> datetime:
        return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)

    window_start = utc(start) if start else held[0]
    window_end = utc(end) if end else held[1]
    if window_start >= window_end:
        raise UsageError(f"backfill start {window_start.isoformat()} is not before end {window_end.isoformat()}, "
                         "expected start < end, such as start=2026-10-03 end=2026-10-05")
    return window_start, window_end


@task(retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_unless_user_error)
def apply_and_materialize(tables: dict[str, object], settings: Settings, full: bool,
                          backfill: tuple[datetime | None, datetime | None] = (None, None)) -> dict[str, object]:
    """A backfill's range, else incrementally (from just before the last run's end) unless `full` or never done."""
    online = online_store_kind(settings)
    store = feature_store(settings, online)
    apply_definitions(store, settings)
    held = tables["start"].to_pydatetime(), tables["end"].to_pydatetime()
    resume = None
    if backfill != (None, None):
        window_start, end = backfill_window(*backfill, held)
    else:
        start, end = held
        resume = None if full else incremental_start(
            store, timedelta(minutes=settings.features.materialize_overlap_minutes))
        window_start = max(start, resume) if resume else start
    materialize(store, window_start, end)
    return {"online_store": online, "materialized_from": window_start, "materialized_to": end,
            "incremental": resume is not None}


@flow(name="build-features", log_prints=True, timeout_seconds=1800)
def build_features(
    namespace: str | None = None,
    full: bool = False,
    start: datetime | None = None,
    end: datetime | None = None,
) -> dict[str, object]:
    settings = settings_with(namespace)
    tables = write_tables(settings)
    materialized = apply_and_materialize(tables, settings, full, (start, end))
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
