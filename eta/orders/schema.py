"""The canonical orders schema (DoorDash's layout plus a stable `order_id`), its validation, and the file loader.

Every row that comes in leaves either accepted or rejected with a reason: counts in = accepted + rejected.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow

from eta.errors import UserError
from eta.settings import ValidationSettings

MARKET_STATE_COLUMNS = ["total_onshift_dashers", "total_busy_dashers", "total_outstanding_orders"]
BASKET_COLUMNS = ["total_items", "subtotal", "num_distinct_items", "min_item_price", "max_item_price"]
ESTIMATE_COLUMNS = ["estimated_order_place_duration", "estimated_store_to_consumer_driving_duration"]
TIMESTAMP_COLUMNS = ["created_at", "actual_delivery_time"]
NUMERIC_COLUMNS = ["market_id", "store_id", "order_protocol", *BASKET_COLUMNS, *MARKET_STATE_COLUMNS, *ESTIMATE_COLUMNS]
ORDER_COLUMNS = [
    "market_id",
    "created_at",
    "actual_delivery_time",
    "store_id",
    "store_primary_category",
    "order_protocol",
    *BASKET_COLUMNS,
    *MARKET_STATE_COLUMNS,
    *ESTIMATE_COLUMNS,
]
# A DoorDash row has no id: these fields together identify one order, so re-ingesting the same row is a no-op.
# Only fields the app knows when the order is placed, so the service (at request time) and ingestion (after
# delivery) derive the same id and a logged prediction finds its order.
IDENTITY_COLUMNS = ["market_id", "store_id", "created_at", "order_protocol", *BASKET_COLUMNS]
# The app's own id, when a file or a request carries one: kept as is.
ORDER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class OrdersBatch:
    accepted: pd.DataFrame
    rejected: pd.DataFrame  # the offending rows as read, plus `reason`

    @property
    def report(self) -> dict[str, object]:
        kinds = self.rejected["reason"].str.split("; ").explode().str.replace(r" \(got .*", "", regex=True)
        reasons = kinds.value_counts() if len(self.rejected) else {}
        return {
            "rows_in": len(self.accepted) + len(self.rejected),
            "accepted": len(self.accepted),
            "rejected": len(self.rejected),
            "reasons": {str(k): int(v) for k, v in dict(reasons).items()},
        }


def delivery_minutes(orders: pd.DataFrame) -> pd.Series:
    """The label: minutes from order creation to delivery."""
    return (orders["actual_delivery_time"] - orders["created_at"]).dt.total_seconds() / 60.0


def derived_order_id(market_id: float, store_id: float, created_at_us: int, order_protocol: float,
                     *basket: float) -> str:
    """The id of an order without one of its own: a hash of its IDENTITY_COLUMNS (created_at in UTC microseconds).

    The one derivation both sides call: `order_ids` for a batch, `request_order_id` for a request.
    Numbers are hashed as floats (an int 3 and a CSV's 3.0 are the same order).
    """
    text = "|".join([repr(float(market_id)), repr(float(store_id)), str(int(created_at_us)),
                     repr(float(order_protocol)), *(repr(float(value)) for value in basket)])
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def request_order_id(fields: dict[str, object]) -> str:
    """`derived_order_id` of one order's fields as a request carries them (created_at an aware datetime)."""
    created_at = fields["created_at"]
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    return derived_order_id(fields["market_id"], fields["store_id"], micros, fields["order_protocol"],
                            *(fields[column] for column in BASKET_COLUMNS))


def order_ids(orders: pd.DataFrame) -> pd.Series:
    """A stable id per order: its own `order_id` where it has one, else derived from its identifying fields."""
    micros = orders["created_at"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[us]").astype(np.int64)
    numbers = [orders[column].to_numpy(dtype=float, na_value=np.nan).tolist()
               for column in ["market_id", "store_id", "order_protocol", *BASKET_COLUMNS]]
    market, store, protocol, *basket = numbers
    derived = pd.Series([derived_order_id(m, s, c, p, *b) for m, s, c, p, *b in
                         zip(market, store, micros.tolist(), protocol, *basket)], index=orders.index, dtype=object)
    if "order_id" not in orders.columns:
        return derived
    own = orders["order_id"]
    return own.where(own.notna() & (own.astype(str).str.strip() != ""), derived).astype(str)


def orders_schema(limits: ValidationSettings) -> pa.DataFrameSchema:
    def count(nullable: bool = True) -> pa.Column:
        return pa.Column(float, pa.Check.ge(0), nullable=nullable)

    return pa.DataFrameSchema(
        {
            "market_id": pa.Column(float, pa.Check.ge(1), nullable=False),
            "store_id": pa.Column(float, pa.Check.ge(0), nullable=False),
            "created_at": pa.Column("datetime64[ns, UTC]", nullable=False),
            "actual_delivery_time": pa.Column("datetime64[ns, UTC]", nullable=False),
            "store_primary_category": pa.Column(object, nullable=True),
            "order_protocol": pa.Column(float, pa.Check.in_range(1, 7), nullable=True),
            "total_items": pa.Column(float, pa.Check.in_range(1, limits.max_items), nullable=False),
            "subtotal": count(nullable=False),
            "num_distinct_items": pa.Column(float, pa.Check.ge(1), nullable=False),
            # Real rows carry negative item prices (discounts), so prices are only required to be present.
            "min_item_price": pa.Column(float, nullable=False),
            "max_item_price": pa.Column(float, nullable=False),
            "total_onshift_dashers": count(),
            "total_busy_dashers": count(),
            "total_outstanding_orders": count(),
            "estimated_order_place_duration": count(nullable=False),
            "estimated_store_to_consumer_driving_duration": count(),
        },
        checks=[
            pa.Check(
                lambda df: df["actual_delivery_time"] > df["created_at"],
                name="delivered after created",
            ),
            pa.Check(
                lambda df: delivery_minutes(df) <= limits.max_delivery_minutes,
                name=f"delivery within {limits.max_delivery_minutes:g} minutes",
            ),
        ],
        strict=False,
    )


def _coerce(raw: pd.DataFrame, source: str) -> tuple[pd.DataFrame, pd.Series]:
    """Parse text columns into the schema's types; a value that does not parse becomes a reason, not a NaN."""
    missing = [c for c in ORDER_COLUMNS if c not in raw.columns]
    if len(missing) == len(ORDER_COLUMNS):
        raise UserError(f"{source} is not in DoorDash's layout (its columns: {', '.join(map(str, raw.columns))}), "
                        f"expected the columns {', '.join(ORDER_COLUMNS)}")
    if missing:
        raise UserError(f"{source} lacks the columns {', '.join(missing)}, expected DoorDash's layout: "
                        f"{', '.join(ORDER_COLUMNS)}")
    frame = raw[ORDER_COLUMNS].copy()
    reasons = pd.Series("", index=frame.index, dtype=object)
    for column in [*NUMERIC_COLUMNS, *TIMESTAMP_COLUMNS]:
        values = frame[column]
        if column in TIMESTAMP_COLUMNS:
            parsed = pd.to_datetime(values, errors="coerce", utc=True, format="mixed")
        else:
            parsed = pd.to_numeric(values, errors="coerce").astype(float)
        unparsed = parsed.isna() & values.notna() & (values.astype(str).str.strip() != "")
        if unparsed.any():
            reasons[unparsed] += [f"{column}: cannot parse {v!r}; " for v in values[unparsed]]
        frame[column] = parsed
    frame["store_primary_category"] = frame["store_primary_category"].astype(object)
    if "order_id" in raw.columns:  # the app's ids, kept as is; empty cells get derived ones
        given = raw["order_id"].where(raw["order_id"].notna(), "").astype(str).str.strip()
        bad = (given != "") & ~given.str.fullmatch(ORDER_ID_PATTERN)
        reasons[bad] += [f"order_id: {v!r} is not 1-64 letters, digits or _.:- ; " for v in given[bad]]
        frame["order_id"] = given.where(given != "")
    return frame, reasons


def _describe(case: object) -> str:
    if case.schema_context == "DataFrameSchema":
        return str(case.check)
    value = "" if pd.isna(case.failure_case) else f" (got {case.failure_case!r})"
    return f"{case.column}: {case.check}{value}"


def validate_orders(raw: pd.DataFrame, limits: ValidationSettings, source: str = "the orders") -> OrdersBatch:
    """Split a batch into accepted orders (typed, with `order_id`) and rejected rows with their reasons.

    `source` names the batch in the error a batch without DoorDash's columns raises.
    """
    frame, reasons = _coerce(raw.reset_index(drop=True), source)
    try:
        orders_schema(limits).validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases.dropna(subset=["index"])
        for index, case in cases.groupby("index"):
            reasons[int(index)] += "; ".join(dict.fromkeys(_describe(row) for row in case.itertuples()))
    frame["order_id"] = order_ids(frame)
    duplicate = frame["order_id"].duplicated() & (reasons == "")
    reasons[duplicate] = "duplicate of an earlier row in this batch"
    reasons = reasons.str.strip().str.rstrip(";")
    bad = reasons != ""
    accepted = frame[~bad].reset_index(drop=True)
    accepted[["market_id", "store_id"]] = accepted[["market_id", "store_id"]].astype(np.int64)
    rejected = raw.reset_index(drop=True)[bad].assign(reason=reasons[bad]).reset_index(drop=True)
    return OrdersBatch(accepted=accepted, rejected=rejected)


def read_orders_file(path: Path) -> pd.DataFrame:
    """Read a CSV or Parquet file in DoorDash's layout, as text, so nothing is lost before validation."""
    kind = "Parquet" if path.suffix == ".parquet" else "CSV"
    try:
        if kind == "Parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError as error:
        raise UserError(f"{path} is empty, expected a CSV whose header names DoorDash's columns: "
                        f"{', '.join(ORDER_COLUMNS)}") from error
    except (pd.errors.ParserError, UnicodeDecodeError, pyarrow.ArrowException) as error:
        raise UserError(f"{path} cannot be read as {kind} ({str(error).splitlines()[0]}), expected a CSV or "
                        f"Parquet file (by its .parquet suffix) with DoorDash's columns") from error


def load_orders_file(path: Path, limits: ValidationSettings) -> OrdersBatch:
    return validate_orders(read_orders_file(path), limits, source=str(path))
