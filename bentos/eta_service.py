"""BentoML service answering "how many minutes until this order arrives?".

`POST /eta/order` takes one placed order, reads its store's and market's features from Feast's
online store, builds the model input with the same `model_inputs` training uses, and predicts with
the production model. Run: `bentoml serve bentos.eta_service:EtaService` (or the built Bento).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import bentoml
from pydantic import BaseModel, Field

from eta.feature_store import feature_store, online_store_kind
from eta.features import MARKET_STATE_FEATURES, STORE_HISTORY_FEATURES, model_inputs
from eta.registry import load_model_from, production_tag
from eta.settings import get_settings

settings = get_settings()
# Inside a built Bento the only model packed is the production one, so `latest` resolves to it.
MODEL_TAG = os.environ.get("ETA_MODEL_TAG") or production_tag(settings) or f"{settings.model_name}:latest"


class Order(BaseModel):
    """A placed order, as the app knows it at checkout."""

    store_id: int = Field(ge=0, description="Restaurant id")
    market_id: int = Field(ge=1, description="City/region id")
    created_at: datetime | None = Field(None, description="Order time (UTC); now when omitted")
    order_protocol: int = Field(ge=1, le=7, description="How the order reaches the store")
    total_items: int = Field(ge=1, le=settings.validation.max_items)
    subtotal: float = Field(ge=0, le=1_000_000, description="Basket value in cents")
    num_distinct_items: int = Field(ge=1, le=settings.validation.max_items)
    min_item_price: float = Field(ge=-100_000, le=1_000_000, description="Cents; discounts can be negative")
    max_item_price: float = Field(ge=0, le=1_000_000, description="Cents")
    estimated_order_place_duration: float = Field(ge=0, le=86_400, description="Seconds")
    estimated_store_to_consumer_driving_duration: float = Field(ge=0, le=86_400, description="Seconds")


class Eta(BaseModel):
    minutes: float = Field(description="Predicted minutes from order creation to delivery (median)")
    range_min: tuple[float, float] = Field(description="Calibrated 80% range in minutes, as shown to the customer")
    model_version: str
    store_features_found: bool = Field(description="False when the store has no recent history online")
    market_features_found: bool


@bentoml.service(traffic={"timeout": 10}, workers=1)
class EtaService:
    model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        # On an instance, BentoML resolves the declared model to the stored one.
        self.eta_model = load_model_from(Path(self.model.path), self.model.info.metadata)
        self.store = feature_store(settings, online_store_kind(settings))
        self.feature_service = self.store.get_feature_service(settings.feature_service)
        # Warm the registry cache, the Redis connection and the model before the first real request.
        self.order(Order(store_id=0, market_id=1, order_protocol=1, total_items=1, subtotal=0, num_distinct_items=1,
                         min_item_price=0, max_item_price=0, estimated_order_place_duration=0,
                         estimated_store_to_consumer_driving_duration=0))

    @bentoml.api(route="/eta/order")
    def order(self, order: Order, /) -> Eta:
        online = self.store.get_online_features(
            features=self.feature_service,
            entity_rows=[{"store_id": order.store_id, "market_id": order.market_id}],
        ).to_dict()
        row = order.model_dump()
        row["created_at"] = row["created_at"] or datetime.now(timezone.utc)
        columns = {name: [value] for name, value in row.items()}
        columns.update({name: online[name] for name in [*STORE_HISTORY_FEATURES, *MARKET_STATE_FEATURES]})
        point, lower, upper = self.eta_model.predict(model_inputs(columns))
        return Eta(
            minutes=round(float(point[0]), 2),
            range_min=(round(float(lower[0]), 1), round(float(upper[0]), 1)),
            model_version=str(self.model.tag),
            store_features_found=online[STORE_HISTORY_FEATURES[0]][0] is not None,
            market_features_found=online[MARKET_STATE_FEATURES[0]][0] is not None,
        )
