"""Train and gate: point-in-time training set from Feast, time split, a monotone LightGBM with its conformal range, the gate.

Every trained model goes to the BentoML model store with its metrics, data window, feature service,
code version and gate decision; it becomes the production model only if it passes every gate check
on the same held-out window as the current production model.
Run: `python -m flows.train` or `eta train [--orders FILE --train-until DATE]`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from eta.features.definitions import MODEL_FEATURES, model_inputs
from eta.features.store import feature_store
from eta.model.behaviour import behaviour_failures
from eta.model.registry import gate, load_model, model_metadata, production_tag, promote, save_model
from eta.model.training import baselines, score, split_by_time, train_eta_model, training_set
from eta.orders.ingest import held_history
from eta.settings import Settings
from eta.storage import write_table
from flows.common import retry_unless_user_error, settings_with

METRIC_COLUMNS = ["mae_min", "rmse_min", "p90_abs_err_min", "within_5_min", "within_10_min",
                  "under_prediction_rate", "mean_lateness_min", "interval_coverage_80"]


@task(retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_unless_user_error)
def build_training_set(settings: Settings) -> str:
    """Writes the point-in-time training set beside the orders and returns its path (frames stay out of Prefect).

    With `training.window_days`, of the newest that many days of orders held only."""
    orders = held_history(settings)
    if settings.training.window_days is not None:
        newest = orders["created_at"].max()
        orders = orders[orders["created_at"] > newest - pd.Timedelta(days=settings.training.window_days)]
    frame = training_set(feature_store(settings), orders, settings.feature_service)
    path = settings.project_path / "training_set.parquet"
    write_table(frame, path)
    return str(path)


def reference_path(settings: Settings, tag: str) -> Path:
    """A promoted model's training rows (its train and calibration windows): the weekly report's reference for as long
    as it serves, kept apart because the next training run rewrites the training set, promoted or not."""
    return settings.project_path / "references" / f"{tag.replace(':', '-')}.parquet"


@task
def train_and_gate(training_set_path: str, settings: Settings, train_until: str | None) -> dict[str, object]:
    """Train the challenger, score it and the champion on one held-out window, run the gate, store the model."""
    split = split_by_time(
        pd.read_parquet(training_set_path), settings.training, pd.Timestamp(train_until, tz="UTC") if train_until else None
    )
    model = train_eta_model(split, settings.training)
    challenger = score(model, split.holdout)
    reference = baselines(split)
    champion_tag = production_tag(settings)
    comparable = champion_tag is not None and model_metadata(champion_tag).get("features") == MODEL_FEATURES
    champion = score(load_model(champion_tag), split.holdout) if comparable else None
    behaviour = behaviour_failures(model, model_inputs(split.holdout))
    decision = gate(challenger, champion, reference["naive_median"]["mae_min"], behaviour, settings.gate,
                    incomparable_champion=champion_tag if champion_tag is not None and not comparable else None)
    tag = save_model(
        model,
        {
            "metrics": challenger,
            "baselines": reference,
            "champion": {"tag": champion_tag, "metrics": champion},
            "gate": decision.as_dict(),
            "window": split.window,
            "training": settings.training.model_dump(),
        },
        settings,
        labels={"gate": "passed" if decision.promote else "refused"},
    )
    if decision.promote:
        write_table(pd.concat([split.train, split.calibration], ignore_index=True), reference_path(settings, tag))
    return {"model": tag, "metrics": challenger, "baselines": reference, "champion": champion_tag,
            "champion_metrics": champion, "gate": decision.as_dict()}


@task
def promote_if_passed(result: dict[str, object], settings: Settings) -> str | None:
    if result["gate"]["promote"]:
        promote(result["model"], settings)
    return production_tag(settings)


def _metrics_table(result: dict[str, object]) -> list[dict[str, object]]:
    rows = [("challenger " + result["model"], result["metrics"])]
    if result["champion_metrics"]:
        rows.append(("champion " + result["champion"], result["champion_metrics"]))
    rows += [(name.replace("_", " "), metrics) for name, metrics in result["baselines"].items()]
    return [{"model": name, **{c: round(m[c], 3) if c in m else None for c in METRIC_COLUMNS}} for name, m in rows]


@flow(name="train-model", log_prints=True, timeout_seconds=3600)
def train_model(
    namespace: str | None = None,
    train_until: str | None = None,
    holdout_days: float | None = None,
    num_boost_round: int | None = None,
    reason: str | None = None,
) -> dict[str, object]:
    """Train, gate and maybe promote one model; `reason` says why it runs (the feedback loop's breach)."""
    settings = settings_with(namespace, training__holdout_days=holdout_days, training__num_boost_round=num_boost_round)
    logger = get_run_logger()
    if reason:
        logger.info("retraining because %s", reason)
    path = build_training_set(settings)
    result = train_and_gate(path, settings, train_until)
    production = promote_if_passed(result, settings)
    logger.info("model %s: MAE %.2f min, coverage %.3f", result["model"], result["metrics"]["mae_min"],
                result["metrics"]["interval_coverage_80"])
    logger.info("gate: %s", result["gate"]["reason"])
    create_table_artifact(key="model-metrics", table=_metrics_table(result),
                          description=f"Held-out window of {result['model']}")
    create_table_artifact(key="gate-decision", table=result["gate"]["checks"],
                          description=f"{result['model']}: {result['gate']['reason']}")
    create_table_artifact(
        key="model-slices",
        table=[{"slice": f"market {k}", **v} for k, v in result["metrics"]["by_market"].items()]
        + [{"slice": f"hour {k}", **v} for k, v in result["metrics"]["by_hour"].items()],
        description=f"MAE, range coverage and width of {result['model']} per market and hour of day (UTC)",
    )
    return {**result, "production": production}


if __name__ == "__main__":
    train_model()
