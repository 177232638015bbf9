"""The feedback loop's weekly turn: land the prediction log, report the week, and retrain if the world moved.

Lands what the services logged (joined with the actual delivery times ingested so far), builds the week's
Evidently report, and reads its verdict with `eta.monitoring.retraining`: a breach with enough new labelled orders
and no recent retrain runs the retrain deployment through Prefect, with the reason as a parameter and a
tag. Every decision, triggered or not, is a `retrain-decision` artifact. The retrained model still passes
the gate before it serves. A week without a landed `/eta/order` answer (a fresh stack, no traffic) has nothing to
judge: the turn completes without a report, its decision says so, and nothing is triggered.
Run: `eta feedback [--namespace NS] [--week YYYY-MM-DD]`.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterExpectedStartTime
from prefect.deployments import run_deployment

from eta.model.registry import load_model, model_metadata, production_tag, require_production_tag
from eta.monitoring.retraining import RetrainDecision, breaches, decide, important_features
from eta.orders.ingest import read_history
from eta.settings import Settings
from flows.common import settings_with
from flows.land_predictions import land_predictions
from flows.monitor import NoLoggedAnswers, report_day, week_answers, weekly_report_flow
from monitoring.weekly_report import iso_week

TRAIN_FLOW = "train-model"


def last_retrain_start(since: datetime) -> datetime | None:
    """When the newest training run due after `since` (scheduled, triggered or by hand; waiting, running or
    done) starts or started, per Prefect: a retrain triggered but not yet picked up counts too."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[TRAIN_FLOW])),
            flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
        )
    due = [run.start_time or run.expected_start_time for run in runs if not (run.state and run.state.is_cancelled())]
    return max(due) if due else None


@task
def decide_retraining(settings: Settings, report: dict[str, object], now: datetime) -> RetrainDecision:
    tag = require_production_tag(settings, "the report is judged against it")
    meta = model_metadata(tag)
    found = breaches(report, float(meta["metrics"]["mae_min"]),
                     important_features(load_model(tag), settings.retraining.important_features),
                     settings.retraining, tuple(settings.gate.coverage_band))
    history = read_history(settings)
    new_labelled = int((history["created_at"] > pd.Timestamp(meta["window"]["holdout_end"])).sum())
    last = last_retrain_start(now - timedelta(hours=settings.retraining.cooldown_hours))
    return decide(found, new_labelled, last, now, settings.retraining)


@task(retries=2, retry_delay_seconds=[1, 5])
def nothing_to_judge(settings: Settings, day: str) -> str | None:
    """Why the week cannot be judged (no landed order answer in it), or None when it can."""
    try:
        week_answers(settings, iso_week(day))
    except NoLoggedAnswers as quiet:
        return str(quiet)
    return None


def record_decision(week: str, model: str, decision: RetrainDecision, retrain_run: str | None) -> None:
    get_run_logger().info("week %s: %s%s", week, "retrain triggered: " if decision.trigger else "no retrain: ",
                          decision.reason)
    create_table_artifact(
        key="retrain-decision",
        table=[{"week": week, "model": model, "triggered": decision.trigger,
                "breaches": "; ".join(decision.breaches) or "none", "held back": decision.held_back or "",
                "retrain run": retrain_run or ""}],
        description=f"Retraining decision for week {week}",
    )


@flow(name="feedback-loop", log_prints=True, timeout_seconds=3600)
def feedback_loop(namespace: str | None = None, week: str | None = None) -> dict[str, object]:
    """Land, report the ISO week holding `week` (default: last week), decide, and maybe run the retrain deployment."""
    settings = settings_with(namespace)
    landed = land_predictions(namespace=namespace)
    day = report_day(week)
    # Checked before reporting: a quiet week is not a failed weekly-report run on every Monday of a new stack.
    quiet = nothing_to_judge(settings, day)
    if quiet is not None:
        decision = RetrainDecision(trigger=False, breaches=[], held_back=f"nothing to judge, no report: {quiet}")
        record_decision(iso_week(day).label, production_tag(settings) or "none", decision, None)
        return {"landed": landed, "report": None, "decision": decision.as_dict(), "retrain_run": None}
    report = weekly_report_flow(namespace=namespace, week=day)
    decision = decide_retraining(settings, report, datetime.now(timezone.utc))
    retrain_run = None
    if decision.trigger:
        run = run_deployment(settings.retraining.deployment, timeout=0, tags=["auto-retrain"],
                             parameters={"namespace": namespace, "reason": decision.reason})
        retrain_run = str(run.id)
    record_decision(report["week"], report["model"], decision, retrain_run)
    return {"landed": landed, "report": report, "decision": decision.as_dict(), "retrain_run": retrain_run}


if __name__ == "__main__":
    feedback_loop()
