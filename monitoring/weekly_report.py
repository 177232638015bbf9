"""The weekly report people read: one ISO week of served predictions against the production model's training reference.

Per week, one Evidently snapshot in a local workspace (`<data dir>/evidently`, one project per namespace) and
one HTML file: drift of the features as served and of the predicted minutes, and the model's quality on the
orders whose actual delivery time has been joined (MAE, p90 absolute error, under-prediction rate, 80% range
coverage), overall, per market and per hour band. The project's dashboard plots them week after week
(`evidently ui --workspace <data dir>/evidently`).

Like with like: the week is compared with whole weeks of the reference (on the weekdays the week has
orders on), so the calendar features (hour of day, day of week, hour of week) and everything that follows the
weekly rhythm (couriers, outstanding orders) have the same distribution on both sides when nothing changed.
With less than a whole week of reference the calendar features are left out, and the report says so.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.report import Snapshot
from evidently.metrics import GroupBy, MeanValue, QuantileValue, RowCount, SumValue, ValueDrift
from evidently.presets import DataDriftPreset
from evidently.sdk.models import PanelMetric
from evidently.sdk.panels import counter_panel, line_plot_panel
from evidently.ui.workspace import Project, Workspace

from eta.features.definitions import MODEL_FEATURES, model_inputs
from eta.model.training import EtaModel
from eta.settings import MonitoringSettings, Settings

CALENDAR_FEATURES = ["hour_of_day", "day_of_week", "hour_of_week"]
CATEGORICAL_FEATURES = ["market_id", "order_protocol"]
PREDICTION = "minutes"
ACTUAL = "actual_minutes"
# Per order, from the point, the range and the joined actual (NaN until joined): what the quality metrics average.
ABS_ERROR, UNDER, COVERED, LABELLED = "abs_error_min", "under_predicted", "range_covered", "labelled"
MARKET, HOUR_BAND = "market", "hour_band"
TEST_FIELDS = ("tests", "count_tests", "share_tests", "mean_tests", "std_tests")
SLICES = {MARKET: "by_market", HOUR_BAND: "by_hour_band"}
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
QUALITY = {  # headline name: the metric computing it
    "mae_min": lambda: MeanValue(column=ABS_ERROR),
    "p90_abs_err_min": lambda: QuantileValue(column=ABS_ERROR, quantile=0.9),
    "under_prediction_rate": lambda: MeanValue(column=UNDER),
    "interval_coverage_80": lambda: MeanValue(column=COVERED),
    "labelled_orders": lambda: SumValue(column=LABELLED),
}


@dataclass(frozen=True)
class IsoWeek:
    label: str  # "2026-W42"
    start: pd.Timestamp  # Monday 00:00 UTC

    @property
    def end(self) -> pd.Timestamp:
        return self.start + pd.Timedelta(days=7)


def iso_week(day: dt.date | dt.datetime | str | pd.Timestamp) -> IsoWeek:
    """The ISO week (Monday to Sunday, UTC) holding `day`."""
    moment = pd.Timestamp(day)
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    start = moment.normalize() - pd.Timedelta(days=moment.dayofweek)
    year, week, _ = start.isocalendar()
    return IsoWeek(f"{year}-W{week:02d}", start)


def training_reference(training_rows: pd.DataFrame, model: EtaModel) -> pd.DataFrame:
    """The model's training rows as the log would show them: creation time, model inputs and the model's point."""
    inputs = model_inputs(training_rows)
    point, _, _ = model.predict(inputs)
    frame = pd.DataFrame(inputs, columns=MODEL_FEATURES)
    return frame.assign(created_at=training_rows["created_at"].to_numpy(), **{PREDICTION: point})


def week_orders(predictions: pd.DataFrame, week: IsoWeek) -> pd.DataFrame:
    """The week's `/eta/order` answers: quotes carry a typical basket, not an order's, and are never joined.

    An answer belongs to the week of the moment it predicts for (`created_at`): in production the moment it
    was logged; in a replay on a simulated clock, the replayed order's time."""
    moment = pd.to_datetime(predictions["created_at"], utc=True)
    rows = predictions[(predictions["kind"] == "order") & (moment >= week.start) & (moment < week.end)]
    return rows.reset_index(drop=True)


def whole_weeks(reference: pd.DataFrame, time_column: str = "created_at") -> pd.DataFrame:
    """The reference's last whole weeks of days (UTC): every weekday and hour weighs as in a week. Empty under a week."""
    if reference.empty:
        return reference
    times = pd.to_datetime(reference[time_column], utc=True)
    end = times.max().floor("D") + pd.Timedelta(days=1)
    weeks = int((end - times.min().floor("D")) / pd.Timedelta(days=7))
    return reference[times >= end - pd.Timedelta(days=7 * weeks)].reset_index(drop=True) if weeks else reference.iloc[:0]


def hour_band(hours: np.ndarray, edges: list[int]) -> np.ndarray:
    """'11-14' for an order at 12:xx UTC with edges [..., 11, 14, ...]."""
    index = np.searchsorted(edges, hours, side="right") - 1
    labels = np.array([f"{low:02d}-{high:02d}" for low, high in zip(edges[:-1], edges[1:])])
    return labels[np.clip(index, 0, len(labels) - 1)]


def sampled(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    return frame if len(frame) <= max_rows else frame.sample(max_rows, random_state=seed).reset_index(drop=True)


def report_frame(rows: pd.DataFrame, config: MonitoringSettings) -> pd.DataFrame:
    """Features as served, the point, and per order the quality columns (NaN where no actual is joined yet)."""
    frame = rows[MODEL_FEATURES + [PREDICTION]].astype(float)
    actual = rows[ACTUAL].astype(float) if ACTUAL in rows else pd.Series(np.nan, index=rows.index)
    labelled = actual.notna()
    point = frame[PREDICTION]
    frame[ABS_ERROR] = (point - actual).abs()
    frame[UNDER] = (actual > point).astype(float).where(labelled)
    covered = (actual >= rows["range_low"]) & (actual <= rows["range_high"]) if "range_low" in rows else False
    frame[COVERED] = pd.Series(covered, index=rows.index).astype(float).where(labelled)
    frame[LABELLED] = labelled.astype(float)
    frame[MARKET] = frame["market_id"].map(lambda m: "unknown" if pd.isna(m) else f"{m:g}")
    frame[HOUR_BAND] = hour_band(frame["hour_of_day"].to_numpy(), config.hour_bands)
    return frame


def like_for_like(current: pd.DataFrame, reference: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """The reference rows to judge the week by, and whether the calendar features can be judged at all.

    Whole reference weeks, on the weekdays the week has orders on (all seven for a finished week): a week that
    ends on a Wednesday has fewer couriers and orders than one with its weekend, and no weekend hours. With
    less than a whole week of reference, the calendar is not comparable and is left out.
    """
    weeks = whole_weeks(reference)
    if weeks.empty:
        return reference, False
    return weeks[weeks["day_of_week"].isin(current["day_of_week"].unique())].reset_index(drop=True), True


def weekly_snapshot(
    rows: pd.DataFrame, reference: pd.DataFrame, week: IsoWeek, config: MonitoringSettings, model: str
) -> tuple[Snapshot, dict[str, Any]]:
    """Evidently's snapshot of the week's orders against whole reference weeks, and what it was given."""
    if rows.empty:
        raise ValueError(f"no logged orders in week {week.label} ({week.start:%Y-%m-%d} .. {week.end:%Y-%m-%d})")
    current = report_frame(sampled(rows, config.max_rows, config.sample_seed), config)
    judged_reference, calendar_judged = like_for_like(current, reference)
    # The model learned the reference's actuals: its error there is in-sample, no yardstick for the week's.
    unlabelled = judged_reference.drop(columns=[ACTUAL], errors="ignore")
    base = report_frame(sampled(unlabelled, config.max_rows, config.sample_seed), config)
    features = [f for f in MODEL_FEATURES if calendar_judged or f not in CALENDAR_FEATURES]
    definition = DataDefinition(
        numerical_columns=[c for c in current.columns if c not in CATEGORICAL_FEATURES + [MARKET, HOUR_BAND]],
        categorical_columns=CATEGORICAL_FEATURES + [MARKET, HOUR_BAND],
    )
    methods = {"num_method": config.num_drift_method, "cat_method": config.cat_drift_method,
               "threshold": config.drift_threshold}
    quality = [make() for make in QUALITY.values()]
    metrics = [
        RowCount(),
        DataDriftPreset(columns=features, **methods),
        ValueDrift(column=PREDICTION, method=config.num_drift_method, threshold=config.drift_threshold),
        *quality,
        *[GroupBy(metric, column) for column in SLICES for metric in quality],
    ]
    facts = {
        "week": week.label, "model": model, "orders": len(rows), "sampled_orders": len(current),
        "reference_orders": len(judged_reference), "reference_sampled": len(base), "calendar_judged": calendar_judged,
        "weekdays": sorted(int(d) for d in current["day_of_week"].unique()), "features_judged": features,
    }
    name = (f"{week.label}: {len(current):,} of {len(rows):,} orders"
            + (" (sampled)" if len(current) < len(rows) else "") + f", model {model}")
    snapshot = Report(metrics, include_tests=True).run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(base, data_definition=definition),
        timestamp=week.start.tz_convert("UTC").tz_localize(None).to_pydatetime(),
        metadata={"week": week.label, "model": model, "orders": str(len(rows)), "sampled_orders": str(len(current))},
        tags=["weekly"],
        name=name,
    )
    return snapshot, facts


def headline(snapshot: Snapshot, facts: dict[str, Any], threshold: float) -> dict[str, Any]:
    """The numbers a person (and a retraining trigger) reads first, taken from the snapshot itself."""
    values: dict[str, Any] = {}
    slices: dict[str, dict[str, dict[str, float]]] = {name: {} for name in SLICES.values()}
    drift_scores: dict[str, float] = {}
    drift_share = None
    for metric in snapshot.dict()["metrics"]:
        config, value = metric["config"], metric["value"]
        kind = config["type"].rsplit(":", 1)[-1]
        if kind == "ValueDrift":
            drift_scores[config["column"]] = float(value)
        elif kind == "DriftedColumnsCount":
            drift_share = float(value["share"])
        elif kind == "GroupByMetric":
            name = _quality_name(config["metric"])
            slices[SLICES[config["column_name"]]].setdefault(str(config["label"]), {})[name] = _number(value)
        elif kind in ("MeanValue", "QuantileValue", "SumValue"):
            values[_quality_name(config)] = _number(value)
    prediction_score = drift_scores.pop(PREDICTION)
    for rows in slices.values():
        for numbers in rows.values():
            numbers["labelled_orders"] = int(numbers["labelled_orders"])
    return {
        **facts,
        **values,
        "labelled_orders": int(values["labelled_orders"]),
        "drift_share": drift_share,
        # Wasserstein and Jensen-Shannon are distances: Evidently calls a column drifted at or above the threshold.
        "drifted_features": sorted(c for c, score in drift_scores.items() if score >= threshold),
        "drift_scores": drift_scores,
        "prediction_drift": prediction_score >= threshold,
        "prediction_drift_score": prediction_score,
        **slices,
    }


def _quality_name(config: dict[str, Any]) -> str:
    stored = {k: v for k, v in config.items() if k not in TEST_FIELDS}
    return next(name for name, make in QUALITY.items() if _stored_params(make()) == stored)


def _number(value: Any) -> float:
    return float(value) if value is not None else float("nan")


def project_for(workspace: Workspace, name: str) -> Project:
    found = workspace.search_project(name)
    return found[0] if found else workspace.create_project(name, description=f"Weekly report of namespace {name}")


def _series(kind: str, legend: str, **labels: Any) -> PanelMetric:
    """One series of a panel: Evidently's metric type and the stored parameters that pick its values."""
    return PanelMetric(legend=legend, metric=kind, metric_labels={k: str(v) for k, v in labels.items()})


def dashboard_panels() -> list:
    """Headline counters for the latest week, then each quality number and the drift share week after week."""
    panels = [counter_panel(
        "Latest week", size="full", aggregation="last",
        values=[_series("MeanValue", "MAE, minutes", column=ABS_ERROR),
                _series("QuantileValue", "p90 absolute error, minutes", column=ABS_ERROR),
                _series("MeanValue", "under-prediction rate", column=UNDER),
                _series("MeanValue", "80% range coverage", column=COVERED)],
    )]
    for title, name, column in [("MAE, minutes", "mae_min", ABS_ERROR),
                                ("p90 absolute error, minutes", "p90_abs_err_min", ABS_ERROR),
                                ("Under-prediction rate (actual > point)", "under_prediction_rate", UNDER),
                                ("80% range coverage", "interval_coverage_80", COVERED)]:
        inner = _stored_params(QUALITY[name]())
        overall = _series(inner["type"], "all orders", **{k: v for k, v in inner.items() if k != "type"})
        panels.append(line_plot_panel(title, size="half", values=[
            overall, _series("GroupByMetric", "market {{label}}", column_name=MARKET, metric=str(inner))]))
        panels.append(line_plot_panel(f"{title} by hour band (UTC)", size="half", values=[
            _series("GroupByMetric", "{{label}}", column_name=HOUR_BAND, metric=str(inner))]))
    panels.append(line_plot_panel("Drift of features as served: share drifted", size="half", values=[
        _series("DriftedColumnsCount", "share of features", value_type="share")]))
    panels.append(line_plot_panel("Prediction drift (distance of the point's distribution)", size="half", values=[
        _series("ValueDrift", "predicted minutes", column=PREDICTION)]))
    return panels


def _stored_params(metric: Any) -> dict[str, Any]:
    """A metric's parameters as a snapshot stores them: what dashboard series are matched by."""
    return {k: v for k, v in metric.dict(exclude_none=True).items() if k not in TEST_FIELDS}


def ensure_dashboard(project: Project) -> None:
    """Adds this report's panels a dashboard lacks (by title); panels a person added stay."""
    present = {panel.title for panel in project.dashboard.model().panels}
    for panel in dashboard_panels():
        if panel.title not in present:
            project.dashboard.add_panel(panel)


def store_snapshot(snapshot: Snapshot, workspace_path: Path, project_name: str, week: str) -> Path:
    """Adds the week's snapshot, then removes any earlier one of the same week: one snapshot per week, the newest."""
    workspace = Workspace.create(str(workspace_path))
    project = project_for(workspace, project_name)
    ensure_dashboard(project)
    earlier = [run for run in workspace.list_runs(project.id)
               if (workspace.get_run(project.id, run).metadata or {}).get("week") == week]
    added = workspace.add_run(project.id, snapshot)
    for run in earlier:
        workspace.delete_run(project.id, run)
    return Path(added.url)


def weekly_report(
    predictions: pd.DataFrame, reference: pd.DataFrame, day: dt.date | str, settings: Settings, model: str = ""
) -> dict[str, Any]:
    """Report the ISO week holding `day`: snapshot in the namespace's workspace project, HTML, headline numbers.

    `predictions`: the landed, joined prediction log (at least `kind`, `created_at`, MODEL_FEATURES as served,
    `minutes`, `range_low`, `range_high`, `actual_minutes` NaN until joined). `reference`: the production
    model's training rows (`created_at`, MODEL_FEATURES, and `minutes`, the model's predictions on them).
    """
    week = iso_week(day)
    snapshot, facts = weekly_snapshot(week_orders(predictions, week), reference, week, settings.monitoring, model)
    html = settings.reports_path / f"weekly-{week.label}.html"
    html.parent.mkdir(parents=True, exist_ok=True)
    numbers = headline(snapshot, facts, settings.monitoring.drift_threshold)
    workspace = settings.data_path / "evidently"
    path = store_snapshot(snapshot, workspace, settings.feast_project, week.label)
    page = snapshot.get_html_str(as_iframe=False)
    html.write_text(page.replace("<body>", "<body>" + headline_html(numbers, path), 1))
    return {**numbers, "html": str(html), "snapshot": str(path), "workspace": str(workspace),
            "project": settings.feast_project}


def headline_html(numbers: dict[str, Any], snapshot: Path) -> str:
    """What a reader needs before Evidently's widgets: the week, what was measured on how many orders, the numbers."""
    sample = (f"{numbers['sampled_orders']:,} of {numbers['orders']:,} orders (sampled)"
              if numbers["sampled_orders"] < numbers["orders"] else f"all {numbers['orders']:,} orders")
    calendar = "" if numbers["calendar_judged"] else " (calendar features not judged: under a week of reference)"
    days = "" if len(numbers["weekdays"]) == 7 else " on the same weekdays as the week's (" + ", ".join(
        WEEKDAYS[d] for d in numbers["weekdays"]) + ")"
    rows = [
        ("MAE", f"{numbers['mae_min']:.2f} min"),
        ("p90 absolute error", f"{numbers['p90_abs_err_min']:.2f} min"),
        ("under-prediction rate (actual > point)", f"{numbers['under_prediction_rate']:.1%}"),
        ("80% range coverage", f"{numbers['interval_coverage_80']:.1%}"),
        ("orders with a joined actual", f"{numbers['labelled_orders']:,}"),
        ("drifted features", f"{len(numbers['drifted_features'])} of {len(numbers['features_judged'])}: "
                             f"{', '.join(numbers['drifted_features']) or 'none'}{calendar}"),
        ("prediction drift", f"{'yes' if numbers['prediction_drift'] else 'no'} "
                             f"(distance {numbers['prediction_drift_score']:.3f})"),
    ]
    cells = "".join(f"<tr><th style='text-align:left;padding:2px 16px 2px 0'>{escape(name)}</th>"
                    f"<td>{escape(value)}</td></tr>" for name, value in rows)
    return (f"<section id='weekly-headline' style='font-family:sans-serif;margin:16px 24px'>"
            f"<h1>Week {escape(numbers['week'])}: model {escape(numbers['model'] or 'unnamed')}</h1>"
            f"<p>Measured on {escape(sample)}; reference: {numbers['reference_sampled']:,} orders from whole weeks "
            f"of the model's training window{days}. Snapshot: <code>{escape(str(snapshot))}</code></p>"
            f"<table>{cells}</table></section>")
