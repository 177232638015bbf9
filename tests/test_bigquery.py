"""The `gcp` profile. Google Cloud is out of reach here, so two kinds of test, each saying which it is:

- Run for real, on the BigQuery emulator `crucible-emulator` (its own virtualenv, `.crucible/`, as it
  pins its own duckdb) through the official `google-cloud-bigquery` client: the orders query over a
  window of orders in a BigQuery table and the incremental window. Crucible refuses query parameters, so there
  the same SQL runs with the window written as BigQuery literals; the parameters themselves are
  checked as the job configuration the client sends.
- By config only: Feast's BigQuery offline store and sources (Feast builds its own client, which
  cannot be pointed at the emulator), checked as the configuration and definitions Feast parses.
"""

from __future__ import annotations

import sys
import uuid
from datetime import datetime, timezone

import pandas as pd
import pytest

from eta.orders.bigquery import bigquery_client, incremental_window, orders_query, read_orders
from eta.orders.schema import ORDER_COLUMNS, validate_orders
from eta.orders.simulate import simulate_orders
from eta.settings import PROJECT_ROOT, GcpSettings, Settings, SimulationSettings
from flows.processes import free_port, server_process

CRUCIBLE = PROJECT_ROOT / ".crucible" / "bin" / "crucible"
SINCE, UNTIL = datetime(2026, 10, 1, 12, tzinfo=timezone.utc), datetime(2026, 10, 2, tzinfo=timezone.utc)
TYPES = {"created_at": "TIMESTAMP", "actual_delivery_time": "TIMESTAMP", "store_primary_category": "STRING"}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    port = free_port()
    command = [str(CRUCIBLE), "serve", "--dialect", "bigquery", "--port", str(port)]
    ready = f"http://127.0.0.1:{port}/bigquery/v2/projects/eta-test/datasets"
    with server_process(command, ready, {}, tmp_path_factory.mktemp("crucible") / "crucible.log"):
        yield GcpSettings(project="eta-test", dataset=f"eta_{uuid.uuid4().hex[:6]}", orders_table="orders",
                          api_endpoint=f"http://127.0.0.1:{port}")


def _literal(value, column: str) -> str:
    if pd.isna(value):
        return "NULL"
    if TYPES.get(column) == "TIMESTAMP":
        return f"TIMESTAMP '{pd.Timestamp(value).isoformat()}'"
    if TYPES.get(column) == "STRING":
        return "'" + str(value).replace("'", "''") + "'"
    return repr(float(value))


@pytest.fixture(scope="module")
def orders_in_bigquery(emulator):
    """Two days of simulated orders in an orders table of the emulator (DDL, then DML inserts)."""
    rows = simulate_orders(SimulationSettings(markets=2, stores=15, days=2, seed=5))
    client = bigquery_client(emulator)
    table = f"{emulator.project}.{emulator.dataset}.{emulator.orders_table}"
    client.query(f"CREATE SCHEMA IF NOT EXISTS {emulator.dataset}").result()
    columns = ", ".join(f"{c} {TYPES.get(c, 'FLOAT64')}" for c in ORDER_COLUMNS)
    client.query(f"CREATE TABLE `{table}` ({columns})").result()
    records = rows.to_dict("records")
    for start in range(0, len(records), 100):  # the emulator's SQL parser recurses per row: keep statements short
        values = ", ".join("(" + ", ".join(_literal(row[c], c) for c in ORDER_COLUMNS) + ")"
                           for row in records[start:start + 100])
        client.query(f"INSERT INTO `{table}` VALUES {values}").result(timeout=60)
    return client, rows


def _read(client, config, since, until) -> pd.DataFrame:
    """The orders query with the window written as BigQuery literals (the emulator refuses parameters)."""
    sql, _ = orders_query(config, since, until)
    literal = sql.replace("@since", f"TIMESTAMP '{since.isoformat()}'").replace("@until", f"TIMESTAMP '{until.isoformat()}'")
    return read_orders(client, literal)


def test_on_the_emulator_the_orders_query_reads_exactly_the_window(emulator, orders_in_bigquery):
    """Real: the query runs in the BigQuery dialect on the emulator, read by the official client."""
    client, rows = orders_in_bigquery
    read = _read(client, emulator, SINCE, UNTIL)
    expected = rows[(rows["created_at"] >= SINCE) & (rows["created_at"] < UNTIL)]
    assert len(expected) > 100 and _keys(read) == _keys(expected), "the window's orders, each once, no other"
    assert list(read.columns) == ORDER_COLUMNS and read["created_at"].is_monotonic_increasing
    batch = validate_orders(read, Settings().validation)
    assert len(batch.accepted) + len(batch.rejected) == len(read), "every row read is validated, none lost"
    assert batch.accepted["created_at"].min() >= SINCE


def _keys(orders: pd.DataFrame) -> list[tuple]:
    """Each order as (store, created, delivered), in one order: rows compared by what they are, not by count."""
    return sorted(zip(orders["store_id"].astype(float), pd.to_datetime(orders["created_at"], utc=True),
                      pd.to_datetime(orders["actual_delivery_time"], utc=True)))


def test_the_window_values_travel_as_query_parameters(emulator):
    """Config: what the client sends to BigQuery; the SQL text never holds a value."""
    sql, job = orders_query(emulator, SINCE, UNTIL)
    assert "@since" in sql and "@until" in sql and "2026" not in sql
    assert [(p.name, p.type_, p.value) for p in job.query_parameters] == [
        ("since", "TIMESTAMP", SINCE), ("until", "TIMESTAMP", UNTIL)]


def test_the_next_read_starts_an_overlap_before_the_newest_order_held(emulator, orders_in_bigquery):
    """Real: an order that lands in the table after a read, created before the newest order that read got,
    is read by the next window; without the overlap it would be missed."""
    client, rows = orders_in_bigquery
    # A copy of the orders table of this test's own: the emulator cannot delete the late row afterwards.
    emulator = emulator.model_copy(update={"orders_table": "orders_late"})
    table = f"{emulator.project}.{emulator.dataset}.{emulator.orders_table}"
    client.query(f"CREATE TABLE `{table}` AS SELECT * FROM `{emulator.dataset}.orders`").result(timeout=60)
    first_start, now = datetime(2026, 10, 1, tzinfo=timezone.utc), datetime(2026, 10, 4, tzinfo=timezone.utc)
    first = _read(client, emulator, *incremental_window(None, datetime(2026, 10, 1, 18, tzinfo=timezone.utc), emulator,
                                                        first_start=first_start))
    newest = first["created_at"].max()
    late = rows.tail(1).assign(store_id=9_999.0, created_at=newest - pd.Timedelta(minutes=30),
                               actual_delivery_time=newest + pd.Timedelta(minutes=5))
    values = ", ".join(_literal(late[c].iloc[0], c) for c in ORDER_COLUMNS)
    client.query(f"INSERT INTO `{table}` VALUES ({values})").result(timeout=60)

    second = _read(client, emulator, *incremental_window(newest, now, emulator, first_start=first_start))
    assert _keys(late)[0] in _keys(second), "the late order is read by the next window"
    assert set(_keys(first)) | set(_keys(second)) == set(_keys(rows[rows["created_at"] >= first_start])) | set(
        _keys(late)), "every order of the table read, none invented"
    no_overlap = emulator.model_copy(update={"ingest_overlap_minutes": 0})
    missed = _read(client, emulator, *incremental_window(newest, now, no_overlap, first_start=first_start))
    assert _keys(late)[0] not in _keys(missed), "without the overlap the late order is missed"


def test_the_gcp_profile_gives_feast_a_bigquery_offline_store_and_sources(monkeypatch):
    """Config only: Feast parses the profile's store configuration and the shared definitions' sources."""
    from feast import BigQuerySource
    from feast.repo_operations import parse_repo

    from eta.features.store import FEATURE_REPO, _inside, repo_config
    from eta.settings import get_settings

    monkeypatch.setenv("ETA_PROFILE", "gcp")
    monkeypatch.setenv("ETA_GCP__PROJECT", "eta-prod")
    get_settings.cache_clear()
    try:
        settings = get_settings()
        config = repo_config(settings, "redis")
        assert config.offline_store.type == "bigquery" and config.offline_store.dataset == "eta"
        assert config.offline_store.project_id == "eta-prod"
        with _inside(FEATURE_REPO):
            sys.modules.pop("definitions", None)
            repo = parse_repo(FEATURE_REPO)
        tables = {source.name: source.table for source in repo.data_sources if isinstance(source, BigQuerySource)}
        assert tables == {"store_history_source": "eta-prod.eta.store_history",
                          "market_state_source": "eta-prod.eta.market_state"}
    finally:
        get_settings.cache_clear()
        sys.modules.pop("definitions", None)
