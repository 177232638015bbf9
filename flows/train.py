"""Train and gate: point-in-time training set from Feast, time split, LightGBM, evaluation, promotion gate.

Every trained model is stored in the BentoML model store with its metrics, data window and feature
service; it becomes the production model only if it beats the naive baseline and the current
production model on the same held-out window. Run: `python -m flows.train` or `eta train`.
"""

from __future__ import annotations

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from eta.feature_store import feature_store
from eta.features import MODEL_FEATURES, model_inputs
from eta.ingest import read_history, write_table
from eta.registry import gate, load_booster, model_metadata, production_tag, promote, save_model
from eta.settings import Settings
from eta.training import LABEL, error_metrics, evaluate, split_by_time, train_booster, training_set
from flows.common import settings_with


@task(retries=2, retry_delay_seconds=[1, 5])
def build_training_set(settings: Settings) -> str:
    """Writes the point-in-time training set beside the orders and returns its path (frames stay out of Prefect)."""
    frame = training_set(feature_store(settings), read_history(settings), settings.feature_service)
    path = settings.data_path / "training_set.parquet"
    write_table(frame, path)
    return str(path)


@task
def train_and_register(training_set_path: str, settings: Settings) -> tuple[str, dict[str, object]]:
    split = split_by_time(pd.read_parquet(training_set_path), settings.training.holdout_days)
    booster = train_booster(split.train, settings.training)
    metrics = evaluate(booster, split)
    tag = save_model(booster, {"metrics": metrics, "window": split.window, "training": settings.training.model_dump()}, settings)
    return tag, metrics


@task
def gate_and_promote(tag: str, training_set_path: str, settings: Settings) -> dict[str, object]:
    """Score the champion on the challenger's held-out window, then promote the challenger or refuse it."""
    split = split_by_time(pd.read_parquet(training_set_path), settings.training.holdout_days)
    challenger = model_metadata(tag)["metrics"]
    champion_tag = production_tag(settings)
    champion_mae = None
    if champion_tag is not None and model_metadata(champion_tag).get("features") == MODEL_FEATURES:
        predicted = load_booster(champion_tag).predict(model_inputs(split.holdout))
        champion_mae = error_metrics(split.holdout[LABEL].to_numpy(), predicted)["mae_min"]
    decision = gate(challenger["mae_min"], champion_mae, challenger["baseline_mae_min"], settings.training.promote_margin)
    if decision.promote:
        promote(tag, settings)
    return {**decision.as_dict(), "challenger": tag, "champion": champion_tag, "production": production_tag(settings)}


@flow(name="train-model", log_prints=True)
def train_model(holdout_days: float | None = None, num_boost_round: int | None = None) -> dict[str, object]:
    settings = settings_with(training__holdout_days=holdout_days, training__num_boost_round=num_boost_round)
    path = build_training_set(settings)
    tag, metrics = train_and_register(path, settings)
    decision = gate_and_promote(tag, path, settings)
    logger = get_run_logger()
    logger.info("model %s: %s", tag, metrics)
    logger.info("gate: %s", decision["reason"])
    create_table_artifact(
        key="model-metrics",
        table=[
            {"model": tag, "mae_min": metrics["mae_min"], "rmse_min": metrics["rmse_min"]},
            {"model": "naive median", "mae_min": metrics["baseline_mae_min"], "rmse_min": metrics["baseline_rmse_min"]},
            {"model": f"champion {decision['champion']}", "mae_min": decision["champion_mae_min"], "rmse_min": None},
        ],
        description=f"Held-out window; gate: {'promoted' if decision['promote'] else 'refused'}: {decision['reason']}",
    )
    return {"model": tag, "metrics": metrics, "gate": decision}


if __name__ == "__main__":
    train_model()
