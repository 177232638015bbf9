"""`eta`: the command line for data scientists; each command runs the same flow a schedule runs.

Commands start (or reuse, via PREFECT_API_URL) one Prefect server, run the flow, and print its
result as JSON. A run reading `--orders FILE` works in that file's own namespace (Feast project and
model name `eta_<file stem>`) unless `--namespace` names one, so sources never mix.

A mistake in what the user gave (eta.errors.UserError, or Click's own usage errors) ends in one stderr
line, `error: <what was wrong>, <what would be right>`, exit code 1 (data) or 2 (usage); `eta --debug`
or ETA_DEBUG=1 shows its traceback. A bug always does.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from eta.errors import UserError
from eta.settings import get_settings


def _user_error(error: BaseException) -> UserError | None:
    """The UserError behind `error`, if one is: raised as is, or wrapped (`raise ... from`) on its way up."""
    while error is not None:
        if isinstance(error, UserError):
            return error
        error = error.__cause__
    return None


def _say_error(message: str) -> None:
    typer.echo("error: " + " ".join(message.splitlines()), err=True)


@contextlib.contextmanager
def _one_line_errors(debug: bool) -> Iterator[None]:
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except typer.TyperException as error:  # Click's own: a bad option value (a date, a missing file), an unknown option
        if debug or type(error).__name__ == "NoArgsIsHelpError":  # that one is the help text, shown as such
            raise
        _say_error(error.format_message())
        raise typer.Exit(error.exit_code) from None
    except Exception as error:
        mistake = _user_error(error)
        if mistake is None or debug:
            raise
        _say_error(str(mistake))
        raise typer.Exit(mistake.exit_code) from None


def _hide_library_deprecations() -> None:
    """Feast turns DeprecationWarnings on for every library when imported; a user can do nothing about those."""
    show = warnings.showwarning

    def show_unless_deprecation(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if not issubclass(category, DeprecationWarning):
            show(message, category, *args, **kwargs)

    warnings.showwarning = show_unless_deprecation


_debug = False  # this invocation's --debug (or ETA_DEBUG): mistakes show their traceback and Prefect's whole log


class _Commands(TyperGroup):
    """Every command's mistakes end in one line, whether Click finds them parsing or a command raises them."""

    def make_context(self, info_name: str | None, args: list[str], parent: typer.Context | None = None,
                     **extra: Any) -> typer.Context:
        with _one_line_errors(debug="--debug" in args):
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: typer.Context) -> Any:
        global _debug
        _debug = bool(ctx.params.get("debug"))
        if not _debug:
            _hide_library_deprecations()
        with _one_line_errors(debug=_debug):
            return super().invoke(ctx)


app = typer.Typer(help="eta: delivery-time predictions, trained and served continuously.", no_args_is_help=True,
                  cls=_Commands)
models_app = typer.Typer(help="The model registry: list, promote, roll back.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@app.callback()
def _options(debug: Annotated[bool, typer.Option("--debug", envvar="ETA_DEBUG",
                                                 help="Show the full traceback and Prefect's log of a mistake")] = False
             ) -> None:
    """eta: delivery-time predictions, trained and served continuously."""


def _print(result: Any) -> None:
    typer.echo(json.dumps(result, indent=2, default=str))


def _progress_only(record: logging.LogRecord) -> bool:
    """Prefect's console echo of a failure (ERROR records with tracebacks, the final Failed state) would repeat
    what the CLI reports itself, once; the API still receives every record."""
    if not record.name.startswith("prefect."):
        return True
    return record.levelno < logging.ERROR and not record.getMessage().startswith("Finished in state Failed")


class _ProgressLines(io.TextIOBase):
    """What libraries print during a flow (Feast's progress) goes to stderr stamped like Prefect's progress lines,
    `HH:MM:SS.mmm | INFO    | ...`, so every line but the result (stdout) and an error reads as progress."""

    def __init__(self) -> None:
        self._partial = ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in filter(str.strip, lines):
            sys.stderr.write(f"{datetime.now():%H:%M:%S.%f}"[:12] + f" | INFO    | {line}\n")
        return len(text)

    def flush(self) -> None:  # a partial line waits for its end: a stamp belongs at the start of a line
        sys.stderr.flush()


def _run(flow: Callable[..., Any], **parameters: Any) -> Any:
    from prefect.logging.handlers import PrefectConsoleHandler

    from flows.prefect_api import prefect_api

    if not _debug:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.addFilter(_progress_only)
    # stdout carries the JSON result only; Feast and friends print progress, which goes to stderr.
    progress = _ProgressLines()
    try:
        with contextlib.redirect_stdout(progress), prefect_api(get_settings().data_path / "prefect"):
            return flow(**parameters)
    finally:
        progress.write("\n")  # ends a last unfinished line


OrdersFile = Annotated[
    Optional[Path], typer.Option("--orders", exists=True, dir_okay=False, help="CSV/Parquet in DoorDash's layout")
]
Namespace = Annotated[Optional[str], typer.Option(help="Feast project and model name prefix; default per source")]
def _utc_day(value: str | datetime) -> datetime:
    if isinstance(value, datetime):
        return value
    for layout in ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"):
        with contextlib.suppress(ValueError):
            return datetime.strptime(value, layout)
    raise typer.BadParameter(f"{value!r} is not a date, expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS (UTC)")


Day = Annotated[datetime, typer.Option(parser=_utc_day, metavar="YYYY-MM-DD", help="UTC")]
Week = Annotated[Optional[datetime], typer.Option(parser=_utc_day, metavar="YYYY-MM-DD",
                                                  help="Any day of the ISO week (UTC); default: last week")]


def _path(orders: Path | None) -> str | None:
    return str(orders.resolve()) if orders else None


@app.command()
def run(orders: OrdersFile = None, namespace: Namespace = None, days: Optional[int] = None, build: bool = True) -> None:
    """The whole loop: ingest -> features -> train -> gate -> build -> drift."""
    from flows.pipeline import eta_pipeline

    _print(_run(eta_pipeline, orders_file=_path(orders), namespace=namespace, days=days, build=build))


@app.command()
def ingest(
    orders: OrdersFile = None,
    namespace: Namespace = None,
    days: Optional[int] = None,
    stores: Optional[int] = None,
    markets: Optional[int] = None,
    seed: Optional[int] = None,
) -> None:
    """Validate and add orders from a file, or simulated ones, to the history (idempotent)."""
    from flows.ingest import ingest_orders

    _print(_run(ingest_orders, orders_file=_path(orders), namespace=namespace, days=days, stores=stores,
                markets=markets, seed=seed))


@app.command()
def features(namespace: Namespace = None,
             full: bool = typer.Option(False, "--full", help="Materialize all history, not just since the last run")) -> None:
    """Recompute feature tables, `feast apply`, materialize online (incrementally)."""
    from flows.features import build_features

    _print(_run(build_features, namespace=namespace, full=full))


@app.command()
def train(
    orders: OrdersFile = None,
    train_until: Optional[datetime] = typer.Option(None, parser=_utc_day, metavar="YYYY-MM-DD",
                                                   help="Train on orders created before this (UTC), test on the rest"),
    namespace: Namespace = None,
    holdout_days: Optional[float] = None,
    num_boost_round: Optional[int] = None,
) -> None:
    """Train on Feast's point-in-time training set, evaluate, and promote through the gate.

    With --orders, all of FILE's orders are ingested as history and features rebuilt first.
    """
    from flows.common import namespace_for
    from flows.features import build_features
    from flows.ingest import ingest_orders
    from flows.train import train_model

    def train_flow() -> dict[str, Any]:
        space = namespace_for(_path(orders), namespace)
        if orders:
            ingest_orders(orders_file=_path(orders), namespace=space)
            build_features(namespace=space)
        return train_model(namespace=space, train_until=train_until.isoformat() if train_until else None,
                           holdout_days=holdout_days, num_boost_round=num_boost_round)

    _print(_run(train_flow))


@app.command()
def evaluate(orders: OrdersFile, since: Day, namespace: Namespace = None) -> None:
    """Add FILE's orders to the history and score the production model on those created since DATE."""
    from flows.evaluate import evaluate_model

    if orders is None:
        raise typer.BadParameter("--orders is required", param_hint="--orders")
    metrics = _run(evaluate_model, orders_file=_path(orders), since=since.isoformat(), namespace=namespace)
    _print({k: v for k, v in metrics.items() if k != "by_hour"})  # by_market: orders, MAE, range per market


@app.command()
def build(namespace: Namespace = None, force: bool = False) -> None:
    """Build the Bento for the production model."""
    from flows.build import build_bento

    _print(_run(build_bento, namespace=namespace, force=force))


@app.command()
def drift(namespace: Namespace = None, recent_days: Optional[float] = None) -> None:
    """Evidently drift report: production model's training window vs the latest orders."""
    from flows.drift import check_drift

    _print(_run(check_drift, namespace=namespace, recent_days=recent_days))


@app.command()
def report(namespace: Namespace = None, week: Week = None) -> None:
    """Weekly Evidently report of the logged predictions: drift, MAE, coverage; snapshot in <data dir>/evidently."""
    from flows.monitor import weekly_report_flow

    _print(_run(weekly_report_flow, namespace=namespace, week=week.date().isoformat() if week else None))


@app.command()
def feedback(namespace: Namespace = None, week: Week = None) -> None:
    """Land the log, report the week, and run the retrain deployment if drift or decay crossed a threshold."""
    from flows.feedback import feedback_loop

    _print(_run(feedback_loop, namespace=namespace, week=week.date().isoformat() if week else None))


@app.command()
def land(namespace: Namespace = None) -> None:
    """Land the prediction log (Redis Stream) as Parquet and join predictions with their delivered orders."""
    from flows.land_predictions import land_predictions

    _print(_run(land_predictions, namespace=namespace))


@app.command()
def staleness(namespace: Namespace = None) -> None:
    """Age of the newest value per feature view in the Redis online store."""
    from eta.features.staleness import online_staleness
    from flows.features import FEATURE_VIEWS

    _print(online_staleness(_namespaced(namespace), FEATURE_VIEWS))


@app.command("feast-config")
def feast_config(
    namespace: Namespace = None,
    out: Optional[Path] = typer.Option(None, file_okay=False,
                                       help="Folder for feature_store.yaml; default .eta/<namespace>/feast"),
) -> None:
    """Write the namespace's feature_store.yaml for Feast's own CLI and UI (no secret in it)."""
    from flows.feast_config import write_feast_config

    _print(write_feast_config(_namespaced(namespace), out))


@app.command()
def peaks(namespace: Namespace = None) -> None:
    """Meal peaks of the namespace's orders (hour-of-week volume, lead time): when the services scale up and down."""
    from eta.orders.ingest import held_history
    from eta.serving.meal_peaks import meal_peaks

    settings = _namespaced(namespace)
    _print([window.as_dict() for window in meal_peaks(held_history(settings), settings.kubernetes)])


@app.command()
def manifests(namespace: Namespace = None) -> None:
    """Every Kubernetes manifest as one YAML stream (for `kubectl apply -f -`), peak CronJobs from the namespace's orders."""
    from eta.orders.ingest import held_history
    from eta.serving.kubernetes import manifests as render
    from eta.serving.kubernetes import yaml_stream
    from eta.serving.meal_peaks import meal_peaks

    settings = _namespaced(namespace)
    typer.echo(yaml_stream(render(settings, meal_peaks(held_history(settings), settings.kubernetes))), nl=False)


@app.command("work-pool-template")
def work_pool_template() -> None:
    """The Prefect Kubernetes work pool's base job template (JSON), for `prefect work-pool create --base-job-template`."""
    from eta.serving.kubernetes import work_pool_template as render

    _print(render(get_settings()))


def _namespaced(namespace: str | None):
    return get_settings() if namespace is None else get_settings().in_namespace(namespace)


@models_app.command("list")
def models_list(namespace: Namespace = None) -> None:
    """Every stored model, newest first: MAE, coverage, gate decision, which one serves."""
    from eta.model.registry import list_models

    _print(list_models(_namespaced(namespace)))


@models_app.command("promote")
def models_promote(tag: str, namespace: Namespace = None) -> None:
    """Make TAG the production model (a person's decision: the gate's record stays with the model)."""
    from eta.model.registry import production_tag, promote

    settings = _namespaced(namespace)
    promote(tag, settings)
    _print({"production": production_tag(settings)})


@models_app.command("rollback")
def models_rollback(namespace: Namespace = None) -> None:
    """Put the previous production model back."""
    from eta.model.registry import rollback

    _print({"production": rollback(_namespaced(namespace))})


if __name__ == "__main__":
    app()
