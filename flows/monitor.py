"""Weekly report: one ISO week of logged predictions against the production model's training reference.

Reads the landed, joined prediction log (`monitoring.predictions_path` in the namespace's folder) and the
training set of the production model's window; writes the week's Evidently snapshot into the workspace
`<data dir>/evidently` (project: the namespace; reporting a week again replaces its snapshot), the HTML
`<namespace folder>/reports/weekly-<week>.html`, a `weekly-report` artifact with the headline numbers, and the
week's drift verdict in `reports/drift_status.json`, which the services export as `eta_drift_flagged` (the newest
week's: reporting an older week again leaves it). A week without a logged answer is `NoLoggedAnswers`.
Run: `eta report [--namespace NS] [--week YYYY-MM-DD]`, then `evidently ui --workspace .eta/evidently`.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from eta.errors import UserError
from eta.model.registry import load_model, model_metadata, require_production_tag
from eta.monitoring.drift_status import drift_status_path, read_drift_status, write_drift_status
from eta.settings import Settings
from flows.common import retry_unless_user_error, settings_with
from flows.train import reference_path
from monitoring.weekly_report import PREDICTION, IsoWeek, iso_week, training_reference, week_orders, weekly_report


class NoLoggedAnswers(UserError):
    """The week holds no landed `/eta/order` answer: a person asked for the wrong week or has not landed the log;
    for the scheduled feedback loop, a week with nothing to judge (a fresh stack, no traffic)."""


def report_day(week: str | None) -> str:
    """The day (YYYY-MM-DD, UTC) whose ISO week is reported: `week`, by default a day of last week."""
    return week or (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=7)).date().isoformat()


def read_predictions(settings: Settings, week: IsoWeek) -> pd.DataFrame:
    """The week's part of the landed, joined log: its `day=YYYY-MM-DD` folders, or a single Parquet file."""
    path = settings.project_path / settings.monitoring.predictions_path
    days = [(week.start + pd.Timedelta(days=d)).strftime("%Y-%m-%d") for d in range(7)]
    files = [f for day in days for f in sorted((path / f"day={day}").glob("*.parquet"))] if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise NoLoggedAnswers(
            f"no landed prediction log for week {week.label} at {path}: land the log first (`eta land`), "
            "or point monitoring.predictions_path at the Parquet file or folder that holds it")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def week_answers(settings: Settings, week: IsoWeek) -> pd.DataFrame:
    """The week's landed `/eta/order` answers; `NoLoggedAnswers` when there is none to judge."""
    rows = week_orders(read_predictions(settings, week), week)
    if rows.empty:
        raise NoLoggedAnswers(
            f"no logged order answers in week {week.label} ({week.start:%Y-%m-%d} .. {week.end:%Y-%m-%d}) in "
            f"{settings.project_path / settings.monitoring.predictions_path}: expected a week the services answered "
            "orders in, landed (`eta land`)")
    return rows


def read_reference(settings: Settings, tag: str) -> pd.DataFrame:
    """The production model's training rows (train and calibration windows: the refit saw both), as the train flow
    kept them when it promoted the model; for a model promoted otherwise, its window's rows of the training set."""
    kept = reference_path(settings, tag)
    if kept.exists():
        return training_reference(pd.read_parquet(kept), load_model(tag))
    window = model_metadata(tag)["window"]
    path = settings.project_path / "training_set.parquet"
    if not path.exists():
        raise UserError(f"no training set at {path}: `eta train` writes it")
    frame = pd.read_parquet(path)
    created = frame["created_at"]
    rows = frame[(created >= pd.Timestamp(window["train_start"])) & (created <= pd.Timestamp(window["calibration_end"]))]
    if rows.empty:
        raise UserError(f"the training set at {path} holds none of {tag}'s training window ({window['train_start']} .. "
                        f"{window['calibration_end']}): a later training run replaced it; expected the rows the train "
                        f"flow keeps for a model it promotes at {kept} (train again: `eta train`)")
    return training_reference(rows.reset_index(drop=True), load_model(tag))


@task(retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_unless_user_error)
def build_weekly_report(settings: Settings, week: str) -> dict[str, object]:
    tag = require_production_tag(settings, "the week is compared with its training reference")
    answers = week_answers(settings, iso_week(week))
    return weekly_report(answers, read_reference(settings, tag), week, settings, tag)


def record_drift_verdict(settings: Settings, report: dict[str, object]) -> bool:
    """Keep the week's drift verdict for the services to export, unless a newer week's is kept; whether it was.

    Drifted: any feature as served, or the predictions (`minutes` among the drifted columns). Like with like
    (the week against whole reference weeks), so an unchanged world is not flagged for its calendar."""
    path = drift_status_path(settings)
    kept = read_drift_status(path)
    # A verdict without a week (written by check-drift before) is replaced.
    if kept is not None and (kept.get("week") or "") > str(report["week"]):
        return False
    drifted = list(report["drifted_features"]) + ([PREDICTION] if report["prediction_drift"] else [])
    write_drift_status(path, {"drift_detected": bool(drifted), "drifted_columns": drifted, "model": report["model"],
                              "html": report["html"], "week": report["week"]})
    return True


def _markdown(report: dict[str, object]) -> str:
    rows = [("MAE, min", f"{report['mae_min']:.2f}"), ("p90 absolute error, min", f"{report['p90_abs_err_min']:.2f}"),
            ("under-prediction rate", f"{report['under_prediction_rate']:.3f}"),
            ("80% range coverage", f"{report['interval_coverage_80']:.3f}"),
            ("orders (sampled)", f"{report['orders']} ({report['sampled_orders']})"),
            ("orders with actuals", str(report["labelled_orders"])),
            ("share of drifted features", f"{report['drift_share']:.3f}"),
            ("drifted features", ", ".join(report["drifted_features"]) or "none"),
            ("prediction drift", f"{report['prediction_drift']} ({report['prediction_drift_score']:.3f})")]
    rows += [(f"market {m}: MAE / coverage", f"{v['mae_min']:.2f} / {v['interval_coverage_80']:.3f}")
             for m, v in report["by_market"].items()]
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return (f"**Week {report['week']}**, model `{report['model']}`\n\n| number | value |\n|---|---|\n{table}\n\n"
            f"Snapshot: `{report['snapshot']}`\n\nHTML: `{report['html']}`\n\n"
            f"Dashboard: `evidently ui --workspace {report['workspace']}`, project `{report['project']}`")


@flow(name="weekly-report", log_prints=True, timeout_seconds=1800)
def weekly_report_flow(namespace: str | None = None, week: str | None = None) -> dict[str, object]:
    """Report the ISO week holding `week` (YYYY-MM-DD, UTC); default: last week."""
    settings = settings_with(namespace)
    day = report_day(week)
    report = build_weekly_report(settings, day)
    exported = record_drift_verdict(settings, report)
    logger = get_run_logger()
    logger.info("week %s: MAE %.2f min, coverage %.3f, drifted features: %s; snapshot %s",
                report["week"], report["mae_min"], report["interval_coverage_80"],
                report["drifted_features"] or "none", report["snapshot"])
    if not exported:
        logger.info("drift verdict of %s not exported: a newer week's stays in %s", report["week"],
                    drift_status_path(settings))
    create_markdown_artifact(key="weekly-report", markdown=_markdown(report),
                             description=f"Weekly report {iso_week(day).label}")
    return report


if __name__ == "__main__":
    weekly_report_flow()
