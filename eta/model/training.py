"""Training set (point-in-time, from Feast), time split, a monotone LightGBM model with a conformal range.

The model learns log-minutes (delivery times are right-skewed; the exponentiated prediction estimates
the median, which is what minimises MAE). Monotone constraints keep a longer drive, a bigger basket or
a busier market from ever shortening an ETA; LightGBM refuses monotone constraints with its quantile
objective, so the range is not two more quantile models but split-conformal quantiles of the log
residuals, fitted on a calibration window the model never saw: multiplicative, so it stays monotone too,
and it covers the asked share (80%) of orders like the calibration window's. The offsets are calibrated per
market (Mondrian split-conformal), so the range covers 80% in each market, not only on average: a market's
own quantiles are shrunk toward the global ones by how few calibration orders it has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import pandas as pd
from feast import FeatureStore

from eta.errors import UserError
from eta.features.definitions import MARKET_STATE_FEATURES, MODEL_FEATURES, REQUEST_FIELDS, model_inputs
from eta.features.point_in_time import historical_features, reads_files
from eta.model.metrics import delivery_metrics, sliced_metrics
from eta.orders.schema import delivery_minutes
from eta.settings import TrainingSettings

LABEL = "delivery_minutes"
MONOTONE_INCREASING = [
    "estimated_store_to_consumer_driving_duration",
    "estimated_order_place_duration",
    "total_items",
    "num_distinct_items",
    "total_outstanding_orders",
    "outstanding_per_dasher",
]


def training_entities(orders: pd.DataFrame) -> pd.DataFrame:
    """What a training row starts from: the order's request fields, its label and its moment."""
    entity_df = orders[list(dict.fromkeys(["order_id", "store_id", "market_id", *REQUEST_FIELDS]))].copy()
    entity_df["event_timestamp"] = orders["created_at"]
    entity_df[LABEL] = delivery_minutes(orders)
    assert not set(entity_df.columns) & set(MARKET_STATE_FEATURES), "features must come from Feast"
    return entity_df


def training_set(store: FeatureStore, orders: pd.DataFrame, feature_service: str) -> pd.DataFrame:
    """Each order's request fields and label joined with the store and market features known at its creation.

    Locally, Feast's definitions (feature service, views, TTLs, sources) joined by DuckDB ASOF joins: the
    same rows Feast's `get_historical_features` returns (property-tested), at a fraction of its cost. On
    BigQuery sources (`gcp`), Feast's own retrieval runs the join in BigQuery.
    """
    entities = training_entities(orders)
    if reads_files(store, feature_service):
        joined = historical_features(store, entities, feature_service)
    else:
        joined = store.get_historical_features(entity_df=entities,
                                               features=store.get_feature_service(feature_service)).to_df()
    return joined.sort_values(["event_timestamp", "order_id"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class TimeSplit:
    train: pd.DataFrame
    calibration: pd.DataFrame
    holdout: pd.DataFrame

    @property
    def window(self) -> dict[str, str]:
        return {
            f"{part}_{edge}": str(getattr(getattr(self, part)["created_at"], how)())
            for part in ("train", "calibration", "holdout")
            for edge, how in (("start", "min"), ("end", "max"))
        }


def split_by_time(frame: pd.DataFrame, config: TrainingSettings, train_until: pd.Timestamp | None = None) -> TimeSplit:
    """Train | calibrate | hold out, in time order: nothing from the future leaks into training or calibration.

    The holdout starts at `train_until` (default: the last `holdout_days`); calibration is the last
    `calibration_days` before it.
    """
    holdout_start = train_until if train_until is not None else frame["created_at"].max() - pd.Timedelta(
        days=config.holdout_days
    )
    calibration_start = holdout_start - pd.Timedelta(days=config.calibration_days)
    created = frame["created_at"]
    split = TimeSplit(
        train=frame[created < calibration_start].reset_index(drop=True),
        calibration=frame[(created >= calibration_start) & (created < holdout_start)].reset_index(drop=True),
        holdout=frame[created >= holdout_start].reset_index(drop=True),
    )
    sizes = {part: len(getattr(split, part)) for part in ("train", "calibration", "holdout")}
    if sizes["train"] < 100 or sizes["calibration"] < 20 or sizes["holdout"] < 20:
        raise UserError(
            f"time split at {calibration_start} / {holdout_start} leaves {sizes} of the orders held "
            f"({created.min()} .. {created.max()}), need at least 100 / 20 / 20: a --train-until inside that "
            "window, more days ingested, or other training.holdout_days / calibration_days"
        )
    return split


def lightgbm_params(config: TrainingSettings) -> dict[str, object]:
    return {
        "objective": "regression",
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf,
        "monotone_constraints": [1 if name in MONOTONE_INCREASING else 0 for name in MODEL_FEATURES],
        "monotone_constraints_method": "intermediate",
        "num_threads": 2,
        "seed": 0,
        "deterministic": True,
        "verbosity": -1,
    }


MARKET_COLUMN = MODEL_FEATURES.index("market_id")


@dataclass(frozen=True)
class EtaModel:
    """The point model (log-minutes) and the conformal range as log offsets around it, global and per market."""

    point: lgb.Booster
    log_lower: float
    log_upper: float
    typical_order: dict[str, float] = field(default_factory=dict)  # what a quote assumes before the basket exists
    market_log_range: dict[float, tuple[float, float]] = field(default_factory=dict)  # other markets: the global range
    _factors: dict[float, tuple[float, float]] = field(init=False, repr=False, compare=False)
    _global_factors: tuple[float, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Multipliers of the point ETA, computed once: a request pays one dict lookup for its market's range.
        object.__setattr__(self, "_factors", {float(market): (math.exp(low), math.exp(high))
                                              for market, (low, high) in self.market_log_range.items()})
        object.__setattr__(self, "_global_factors", (math.exp(self.log_lower), math.exp(self.log_upper)))

    def predict(self, inputs: np.ndarray, threads: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point ETA, lower and upper end of the range, in minutes (`threads=1` for one request: no pool wake-up)."""
        point = np.exp(self.point.predict(inputs, num_threads=threads))
        low, high = self.range_factors(inputs[:, MARKET_COLUMN])
        return point, point * low, point * high

    def range_factors(self, markets: np.ndarray) -> tuple[np.ndarray | float, np.ndarray | float]:
        """Each row's range as multipliers of its point ETA: its market's, or the global one for a market not calibrated."""
        if len(markets) == 1 or (len(markets) and markets.min() == markets.max()):  # an order, a restaurant page
            return self._factors.get(float(markets[0]), self._global_factors)
        values, rows = np.unique(markets, return_inverse=True)
        factors = np.array([self._factors.get(float(m), self._global_factors) for m in values]).reshape(-1, 2)
        return factors[rows, 0], factors[rows, 1]


def conformal_offsets(residuals: np.ndarray, interval: float) -> tuple[float, float]:
    """Split-conformal quantiles of log(actual / predicted): the finite-sample corrected order statistics.

    The floor((n+1) * tail)-th and ceil((n+1) * (1 - tail))-th smallest residuals, no further out: the
    narrowest ends that still cover the asked share of a new order exchangeable with these.
    """
    n, tail = len(residuals), (1 - interval) / 2
    ordered = np.sort(residuals)
    low = ordered[min(max(math.floor((n + 1) * tail), 1), n) - 1]
    high = ordered[min(max(math.ceil((n + 1) * (1 - tail)), 1), n) - 1]
    return float(min(low, 0.0)), float(max(high, 0.0))


def market_offsets(
    residuals: np.ndarray, markets: np.ndarray, overall: tuple[float, float], config: TrainingSettings
) -> dict[float, tuple[float, float]]:
    """Mondrian split-conformal: each market's own offsets, shrunk toward the global ones where it has few orders.

    A market with n calibration orders gets w * own + (1 - w) * global, w = n / (n + market_range_shrinkage):
    its own tail quantiles are noisy when n is small. Below `market_range_min_orders` it keeps the global range.
    """
    ranges = {}
    for market in np.unique(markets[~np.isnan(markets)]):
        own = residuals[markets == market]
        if len(own) < config.market_range_min_orders:
            continue
        weight = len(own) / (len(own) + config.market_range_shrinkage)
        low, high = conformal_offsets(own, config.interval)
        ranges[float(market)] = (weight * low + (1 - weight) * overall[0], weight * high + (1 - weight) * overall[1])
    return ranges


def fit_booster(train: pd.DataFrame, config: TrainingSettings) -> lgb.Booster:
    inputs, label = model_inputs(train), np.log(train[LABEL].to_numpy())
    if config.dask_scheduler:
        from eta.model.dask_training import fit_on_dask

        return fit_on_dask(inputs, label, lightgbm_params(config), config)
    dataset = lgb.Dataset(inputs, label=label, feature_name=MODEL_FEATURES)
    return lgb.train(lightgbm_params(config), dataset, num_boost_round=config.num_boost_round)


def train_eta_model(split: TimeSplit, config: TrainingSettings) -> EtaModel:
    """Calibrate the range with a model that never saw the calibration window, then refit on both windows.

    The marketplace drifts, so the days just before the holdout are the most valuable to learn from; the
    refit keeps them, and the gate checks on the untouched holdout that the range still covers, overall
    and in each market.
    """
    inputs = model_inputs(split.calibration)
    residuals = np.log(split.calibration[LABEL].to_numpy()) - fit_booster(split.train, config).predict(inputs)
    overall = conformal_offsets(residuals, config.interval)
    by_market = market_offsets(residuals, inputs[:, MARKET_COLUMN], overall, config)
    seen = pd.concat([split.train, split.calibration], ignore_index=True)
    return EtaModel(fit_booster(seen, config), *overall, typical_order=typical_order(seen), market_log_range=by_market)


def typical_order(frame: pd.DataFrame) -> dict[str, float]:
    """Median request fields of the orders a model learned from: a quote's stand-in for the unknown basket."""
    return {name: float(frame[name].median()) for name in REQUEST_FIELDS if name not in ("created_at", "market_id")}


def predict_frame(model: EtaModel, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point ETA and range of every order of a training-set frame: what `score` judges."""
    return model.predict(model_inputs(frame))


def score(model: EtaModel, frame: pd.DataFrame) -> dict[str, object]:
    """Every metric of `model` on `frame`, with per-market and per-hour slices (range coverage and width in each)."""
    point, lower, upper = predict_frame(model, frame)
    actual = frame[LABEL].to_numpy()
    return {
        **delivery_metrics(actual, point, lower, upper),
        "by_market": sliced_metrics(actual, point, lower, upper, frame["market_id"]),
        "by_hour": sliced_metrics(actual, point, lower, upper, frame["created_at"].dt.hour),
    }


def baselines(split: TimeSplit) -> dict[str, dict[str, float]]:
    """What a model must beat: the training median, and the platform's own estimate plus a fitted constant."""
    actual = split.holdout[LABEL].to_numpy()
    train_estimate = platform_estimate_minutes(split.train)
    constant = float(np.nanmedian(split.train[LABEL].to_numpy() - train_estimate))
    estimate = platform_estimate_minutes(split.holdout) + constant
    estimate = np.where(np.isnan(estimate), np.nanmedian(estimate), estimate)
    return {
        "naive_median": delivery_metrics(actual, np.full_like(actual, split.train[LABEL].median())),
        "platform_estimate": delivery_metrics(actual, estimate),
    }


def platform_estimate_minutes(frame: pd.DataFrame) -> np.ndarray:
    """The dataset's own estimate of each order's duration: placing it plus the drive, in minutes."""
    seconds = frame["estimated_order_place_duration"] + frame["estimated_store_to_consumer_driving_duration"]
    return seconds.to_numpy(dtype=float) / 60
