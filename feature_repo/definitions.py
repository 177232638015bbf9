"""Feast definitions for eta: entities, feature views and the feature service the model and the service share.

Definitions only: Feast imports this file on apply, so nothing here runs work. Sources name the
Parquet tables the features flow writes (`eta.features.store.apply_definitions` anchors them in the
namespace's own feature folder) or, on the `gcp` profile, BigQuery tables of the same names; one set
of definitions serves every namespace and both profiles. Feature names come
from `eta.features.definitions` so training and serving can never disagree on them.
"""

from datetime import timedelta

from feast import BigQuerySource, Entity, FeatureService, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Float64

from eta.features.definitions import MARKET_STATE_FEATURES, STORE_HISTORY_FEATURES
from eta.settings import get_settings

settings = get_settings()

store = Entity(name="store", join_keys=["store_id"], value_type=ValueType.INT64, description="A restaurant")
market = Entity(name="market", join_keys=["market_id"], value_type=ValueType.INT64, description="A city or region")



def table_source(name: str) -> FileSource | BigQuerySource:
    """Where a feature table lives: a Parquet file locally, a BigQuery table of the same name on `gcp`."""
    if settings.profile == "gcp":
        table = f"{settings.gcp.project}.{settings.gcp.dataset}.{name}"
        return BigQuerySource(name=f"{name}_source", table=table, timestamp_field="event_timestamp")
    return FileSource(name=f"{name}_source", path=f"{name}.parquet", timestamp_field="event_timestamp")


store_history_source = table_source("store_history")
market_state_source = table_source("market_state")

# Market supply and demand change by the minute: the ingest path pushes each batch's newest state to
# the online store instead of waiting for the next materialization.
market_state_push = PushSource(name="market_state_push", batch_source=market_state_source)

store_history = FeatureView(
    name="store_history",
    entities=[store],
    ttl=timedelta(days=settings.features.store_history_ttl_days),
    schema=[Field(name=name, dtype=Float64) for name in STORE_HISTORY_FEATURES],
    source=store_history_source,
    online=True,
    description="Trailing delivery minutes (mean, p90) and order count of orders delivered by the store",
)

market_state = FeatureView(
    name="market_state",
    entities=[market],
    ttl=timedelta(minutes=settings.features.market_state_ttl_minutes),
    schema=[Field(name=name, dtype=Float64) for name in MARKET_STATE_FEATURES],
    source=market_state_push,
    online=True,
    description="Couriers on shift, couriers busy and outstanding orders in the market",
)

eta_delivery = FeatureService(name=settings.feature_service, features=[store_history, market_state])
