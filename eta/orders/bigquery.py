"""Orders from BigQuery (the `gcp` profile): one parameterised query over a time window, read incrementally.

The window starts `ingest_overlap_minutes` before the newest order already held, so rows that land
late are read again; ingestion is idempotent (`order_id`), so the overlap costs nothing but bytes.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from eta.orders.schema import ORDER_COLUMNS
from eta.settings import GcpSettings

ORDERS_SQL = (
    "SELECT {columns} FROM `{table}` "
    "WHERE created_at >= @since AND created_at < @until "
    "ORDER BY created_at"
)


def bigquery_client(config: GcpSettings) -> bigquery.Client:
    """Google's API with the environment's credentials, or an emulator (anonymous) when one is configured."""
    if config.api_endpoint:
        return bigquery.Client(project=config.project, credentials=AnonymousCredentials(),
                               client_options={"api_endpoint": config.api_endpoint}, location=config.location)
    return bigquery.Client(project=config.project, location=config.location)


def orders_query(config: GcpSettings, since: datetime, until: datetime) -> tuple[str, bigquery.QueryJobConfig]:
    """The orders query and its parameters: values travel as query parameters, never in the SQL text."""
    sql = ORDERS_SQL.format(columns=", ".join(ORDER_COLUMNS),
                            table=f"{config.project}.{config.dataset}.{config.orders_table}")
    job = bigquery.QueryJobConfig(query_parameters=[
        bigquery.ScalarQueryParameter("since", "TIMESTAMP", since),
        bigquery.ScalarQueryParameter("until", "TIMESTAMP", until),
    ])
    return sql, job


def incremental_window(newest_held: pd.Timestamp | None, now: datetime, config: GcpSettings,
                       first_start: datetime) -> tuple[datetime, datetime]:
    """[since, until) of the next read: from an overlap before the newest order held (or `first_start`) to now."""
    if newest_held is None or pd.isna(newest_held):
        return first_start, now
    return (newest_held - pd.Timedelta(minutes=config.ingest_overlap_minutes)).to_pydatetime(), now


def read_orders(client: bigquery.Client, sql: str, job: bigquery.QueryJobConfig | None = None) -> pd.DataFrame:
    """The query's rows as an orders frame in the file layout (validation comes after, as for files)."""
    rows = [dict(row) for row in client.query(sql, job_config=job).result()]
    return pd.DataFrame(rows, columns=ORDER_COLUMNS)
