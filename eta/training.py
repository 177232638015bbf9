"""Training set (point-in-time, from Feast), time split, LightGBM training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from feast import FeatureStore

from eta.features import MARKET_STATE_FEATURES, MODEL_FEATURES, REQUEST_FIELDS, model_inputs
from eta.orders import delivery_minutes
from eta.settings import TrainingSettings

LABEL = "delivery_minutes"


def training_set(store: FeatureStore, orders: pd.DataFrame, feature_service: str) -> pd.DataFrame:
    """Each order's request fields and label joined with the store and market features known at its creation."""
    entity_df = orders[["order_id", "store_id", "market_id", *REQUEST_FIELDS]].copy()
    entity_df["event_timestamp"] = orders["created_at"]
    entity_df[LABEL] = delivery_minutes(orders)
    assert not set(entity_df.columns) & set(MARKET_STATE_FEATURES), "features must come from Feast"
    joined = store.get_historical_features(
        entity_df=entity_df, features=store.get_feature_service(feature_service)
    ).to_df()
    return joined.sort_values(["event_timestamp", "order_id"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class TimeSplit:
    train: pd.DataFrame
    holdout: pd.DataFrame

    @property
    def window(self) -> dict[str, str]:
        return {
            "train_start": str(self.train["created_at"].min()),
            "train_end": str(self.train["created_at"].max()),
            "holdout_start": str(self.holdout["created_at"].min()),
            "holdout_end": str(self.holdout["created_at"].max()),
        }


def split_by_time(frame: pd.DataFrame, holdout_days: float) -> TimeSplit:
    """Train on everything before the last `holdout_days`, hold those out: no future leaks into training."""
    cutoff = frame["created_at"].max() - pd.Timedelta(days=holdout_days)
    train, holdout = frame[frame["created_at"] < cutoff], frame[frame["created_at"] >= cutoff]
    if len(train) < 100 or len(holdout) < 20:
        raise ValueError(
            f"time split at {cutoff} leaves {len(train)} training and {len(holdout)} held-out orders; "
            "need at least 100 and 20: ingest more days or lower training.holdout_days"
        )
    return TimeSplit(train=train.reset_index(drop=True), holdout=holdout.reset_index(drop=True))


def train_booster(train: pd.DataFrame, config: TrainingSettings) -> lgb.Booster:
    params = {
        # MAE is what customers feel and the long tail would dominate a squared loss.
        "objective": "l1",
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf,
        "num_threads": 2,
        "seed": 0,
        "deterministic": True,
        "verbosity": -1,
    }
    dataset = lgb.Dataset(model_inputs(train), label=train[LABEL].to_numpy(), feature_name=MODEL_FEATURES)
    return lgb.train(params, dataset, num_boost_round=config.num_boost_round)


def error_metrics(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    error = predicted - actual
    return {
        "mae_min": float(np.mean(np.abs(error))),
        "rmse_min": float(np.sqrt(np.mean(error**2))),
        "n_orders": int(len(actual)),
    }


def evaluate(booster: lgb.Booster, split: TimeSplit) -> dict[str, float]:
    """Model and naive-median baseline errors on the held-out window."""
    actual = split.holdout[LABEL].to_numpy()
    model = error_metrics(actual, booster.predict(model_inputs(split.holdout)))
    baseline = error_metrics(actual, np.full_like(actual, split.train[LABEL].median()))
    return {**model, "baseline_mae_min": baseline["mae_min"], "baseline_rmse_min": baseline["rmse_min"]}
