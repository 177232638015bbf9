"""Weekly report: one ISO week of logged predictions against the production model's training reference.

Reads the landed, joined prediction log (`monitoring.predictions_path` in the namespace's folder) and the
training set of the production model's window; writes the week's Evidently snapshot into the workspace
`<data dir>/evidently` (project: the namespace; reporting a week again replaces its snapshot), the HTML
`<namespace folder>/reports/weekly-<week>.html`, and a `weekly-report` artifact with the headline numbers.
Run: `eta report [--namespace NS] [--week YYYY-MM-DD]`, then `evidently ui --workspace .eta/evidently`.
"""

from __future__ import annotations

import datetime as dt

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from eta.errors import UserError
from eta.model.registry import load_model, model_metadata, require_production_tag
from eta.settings import Settings
from flows.common import retry_unless_user_error, settings_with
from monitoring.weekly_report import IsoWeek, iso_week, training_reference, weekly_report


def read_predictions(settings: Settings, week: IsoWeek) -> pd.DataFrame:
    """The week's part of the landed, joined log: its `day=YYYY-MM-DD` folders, or a single Parquet file."""
    path = settings.project_path / settings.monitoring.predictions_path
    days = [(week.start + pd.Timedelta(days=d)).strftime("%Y-%m-%d") for d in range(7)]
    files = [f for day in days for f in sorted((path / f"day={day}").glob("*.parquet"))] if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise UserError(f"no landed prediction log for week {week.label} at {path}: land the log first (`eta land`), "
                        "or point monitoring.predictions_path at the Parquet file or folder that holds it")
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def read_reference(settings: Settings, tag: str) -> pd.DataFrame:
    """The production model's training rows (train and calibration windows: the refit saw both)."""
    window = model_metadata(tag)["window"]
    path = settings.project_path / "training_set.parquet"
    if not path.exists():
        raise UserError(f"no training set at {path}: `eta train` writes it")
    frame = pd.read_parquet(path)
    created = frame["created_at"]
    rows = frame[(created >= pd.Timestamp(window["train_start"])) & (created <= pd.Timestamp(window["calibration_end"]))]
    return training_reference(rows.reset_index(drop=True), load_model(tag))


@task(retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_unless_user_error)
def build_weekly_report(settings: Settings, week: str) -> dict[str, object]:
    tag = require_production_tag(settings, "the week is compared with its training reference")
    try:
        predictions = read_predictions(settings, iso_week(week))
        return weekly_report(predictions, read_reference(settings, tag), week, settings, tag)
    except ValueError as error:  # no logged orders in that week
        raise UserError(str(error)) from error


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
    day = week or (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=7)).date().isoformat()
    report = build_weekly_report(settings, day)
    get_run_logger().info("week %s: MAE %.2f min, coverage %.3f, drifted features: %s; snapshot %s",
                          report["week"], report["mae_min"], report["interval_coverage_80"],
                          report["drifted_features"] or "none", report["snapshot"])
    create_markdown_artifact(key="weekly-report", markdown=_markdown(report),
                             description=f"Weekly report {iso_week(day).label}")
    return report


if __name__ == "__main__":
    weekly_report_flow()
