"""`eta`: the command line for data scientists; each command runs the same flow a schedule runs.

Commands start (or reuse, via PREFECT_API_URL) one Prefect server, run the flow, and print its
result as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from eta.settings import get_settings

app = typer.Typer(help="eta: delivery-time predictions, trained and served continuously.", no_args_is_help=True)


def _run(flow: Callable[..., Any], **parameters: Any) -> None:
    from flows.prefect_api import prefect_api

    with prefect_api(get_settings().data_path / "prefect"):
        result = flow(**parameters)
    typer.echo(json.dumps(result, indent=2, default=str))


OrdersFile = Annotated[
    Optional[Path], typer.Option("--orders", exists=True, dir_okay=False, help="CSV/Parquet in DoorDash's layout")
]


@app.command()
def run(orders: OrdersFile = None, days: Optional[int] = None, build: bool = True) -> None:
    """The whole loop: ingest -> features -> train -> gate -> build -> drift."""
    from flows.pipeline import eta_pipeline

    _run(eta_pipeline, orders_file=str(orders) if orders else None, days=days, build=build)


@app.command()
def ingest(
    orders: OrdersFile = None,
    days: Optional[int] = None,
    stores: Optional[int] = None,
    markets: Optional[int] = None,
    seed: Optional[int] = None,
) -> None:
    """Validate and add orders from a file, or simulated ones, to the history (idempotent)."""
    from flows.ingest import ingest_orders

    _run(ingest_orders, orders_file=str(orders) if orders else None, days=days, stores=stores, markets=markets, seed=seed)


@app.command()
def features() -> None:
    """Recompute feature tables, `feast apply`, materialize online."""
    from flows.features import build_features

    _run(build_features)


@app.command()
def train(holdout_days: Optional[float] = None, num_boost_round: Optional[int] = None) -> None:
    """Train on Feast's point-in-time training set, evaluate, and promote through the gate."""
    from flows.train import train_model

    _run(train_model, holdout_days=holdout_days, num_boost_round=num_boost_round)


@app.command()
def build(force: bool = False) -> None:
    """Build the Bento for the production model."""
    from flows.build import build_bento

    _run(build_bento, force=force)


@app.command()
def drift(recent_days: Optional[float] = None) -> None:
    """Evidently drift report: production model's training window vs the latest orders."""
    from flows.drift import check_drift

    _run(check_drift, recent_days=recent_days)


if __name__ == "__main__":
    app()
