"""Request and answer models of the HTTP API, shared by the Bento services and the reference app.

Bounds are strict so a bad request gets a 422 naming its field before any work is done; ids stay
inside int32 so they always fit Feast's int64 entity keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Annotated, Any

import pandas as pd
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from eta.features.definitions import ORDER_REQUEST_FIELDS
from eta.orders.schema import ORDER_ID_PATTERN
from eta.settings import get_settings

_limits = get_settings()
MAX_ID = 2**31 - 1
MAX_ITEMS = _limits.validation.max_items
MAX_SECONDS = 86_400
MAX_CENTS = 1_000_000


EARLIEST, LATEST = datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc)


def _plausible(moment: datetime) -> datetime:
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    if not EARLIEST <= moment < LATEST:
        raise ValueError(f"must lie between {EARLIEST.date()} and {LATEST.date()}")
    return moment


Moment = Annotated[datetime, AfterValidator(_plausible)]


class _Strict(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: object, info: ValidationInfo) -> object:
        """Pydantic would read `true` as 1 and "42" as 42; a request that sends them has a bug to hear about."""
        if isinstance(value, bool) or (isinstance(value, str) and info.field_name not in ("created_at", "order_id")):
            raise ValueError("must be a JSON number")
        return value


class Order(_Strict):
    """A placed order, as the app knows it at checkout."""

    order_id: str | None = Field(None, pattern=ORDER_ID_PATTERN, description=(
        "The app's id of the order (1-64 letters, digits or _.:-), so its prediction joins the delivered order; "
        "when omitted, derived from store, market, time, protocol and basket as ingestion derives it"))
    store_id: int = Field(ge=0, le=MAX_ID, description="Restaurant id")
    market_id: int = Field(ge=1, le=MAX_ID, description="City/region id")
    created_at: Moment | None = Field(None, description="Order time (UTC unless it says); now when omitted")
    order_protocol: int = Field(ge=1, le=7, description="How the order reaches the store")
    total_items: int = Field(ge=1, le=MAX_ITEMS)
    subtotal: float = Field(ge=0, le=MAX_CENTS, description="Basket value in cents")
    num_distinct_items: int = Field(ge=1, le=MAX_ITEMS)
    min_item_price: float = Field(ge=-100_000, le=MAX_CENTS, description="Cents; discounts can be negative")
    max_item_price: float = Field(ge=0, le=MAX_CENTS, description="Cents")
    estimated_order_place_duration: float = Field(ge=0, le=MAX_SECONDS, description="Seconds")
    estimated_store_to_consumer_driving_duration: float = Field(ge=0, le=MAX_SECONDS, description="Seconds")


def order_request(order: Mapping[str, Any], order_id: str | None = None) -> dict[str, object]:
    """The app's `/eta/order` body for an order row: each checkout field typed as `Order` declares it (a missing
    value as null, which the service refuses naming the field), the order's time, and `order_id` when given."""
    body: dict[str, object] = {
        name: None if pd.isna(order[name]) else int(order[name]) if Order.model_fields[name].annotation is int
        else float(order[name]) for name in ORDER_REQUEST_FIELDS}
    body["created_at"] = order["created_at"].isoformat()
    if order_id is not None:
        body["order_id"] = order_id
    return body


class Eta(BaseModel):
    prediction_id: str = Field(description="This answer's id in the prediction log (time-ordered hex)")
    order_id: str = Field(description="The order's id: as sent, or derived from its fields")
    minutes: float = Field(description="Predicted minutes from order creation to delivery (median)")
    range_min: tuple[float, float] = Field(description="Calibrated 80% range in minutes, as shown to the customer")
    model_version: str
    degraded: bool = Field(description="True when features could not be read fresh (stale or missing)")
    store_features_found: bool = Field(description="False when the store has no recent history online")
    market_features_found: bool


class _StrictNatively(BaseModel):
    """Pydantic's own strict mode, checked in Rust: numbers must be JSON numbers and ids JSON integers.

    For the quote models, where a page carries up to 100 stores and a Python validator per field would
    cost more than the cached answer itself. `Order` stays with `_Strict`: one object per request, and
    its integer fields take whole floats (3.0), which clients building bodies from pandas send.
    """

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")


class QuoteStore(_StrictNatively):
    store_id: int = Field(ge=0, le=MAX_ID, description="Restaurant id")
    estimated_store_to_consumer_driving_duration: float = Field(
        ge=0, le=MAX_SECONDS, description="Routing estimate of the drive to this customer, seconds"
    )


class QuoteRequest(_StrictNatively):
    """A restaurant list page: one customer's context and the stores shown to them, before any basket."""

    market_id: int = Field(ge=1, le=MAX_ID, description="City/region id")
    created_at: Moment | None = Field(None, description="When the page is shown (UTC unless it says); now when omitted")
    stores: list[QuoteStore] = Field(min_length=1, max_length=_limits.serving.max_stores)


class StoreEta(BaseModel):
    store_id: int
    minutes: float
    range_min: tuple[float, float]
    degraded: bool


class Quote(BaseModel):
    model_version: str
    etas: list[StoreEta]
    degraded: bool = Field(description="True when any store's answer was computed without fresh features")
