"""The parent flow: ingest -> features -> train -> gate -> build -> drift, a log line per stage with its time.

Run: `python -m flows.pipeline` or `eta run [--orders FILE]`; scheduled through `prefect.yaml`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger

from flows.build import build_bento
from flows.common import namespace_for
from flows.drift import check_drift
from flows.features import build_features
from flows.ingest import ingest_orders
from flows.train import train_model


@flow(name="eta-pipeline", log_prints=True, timeout_seconds=7200)
def eta_pipeline(
    orders_file: str | None = None,
    namespace: str | None = None,
    days: int | None = None,
    train_until: str | None = None,
    build: bool = True,
    delivered_before: str | None = None,
) -> dict[str, Any]:
    """The whole loop; `delivered_before` ingests only the orders delivered before it (`flows.ingest`)."""
    logger = get_run_logger()
    namespace = namespace_for(orders_file, namespace)
    stages: dict[str, Any] = {}
    timings: dict[str, float] = {}

    def stage(name: str, run: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        stages[name] = run()
        timings[name] = round(time.perf_counter() - started, 2)
        logger.info("stage %-8s done in %6.2f s", name, timings[name])
        return stages[name]

    stage("ingest", lambda: ingest_orders(orders_file=orders_file, namespace=namespace, days=days,
                                          delivered_before=delivered_before))
    stage("features", lambda: build_features(namespace=namespace))
    trained = stage("train", lambda: train_model(namespace=namespace, train_until=train_until))
    if trained["production"] is None:
        # Nothing serves yet (the gate refused the first model): nothing to build, no training window to compare.
        logger.warning("no production model: skipping build and drift; gate said %s", trained["gate"]["reason"])
        return {**stages, "timings_s": timings}
    if build:
        stage("build", lambda: build_bento(namespace=namespace))
    stage("drift", lambda: check_drift(namespace=namespace))
    return {**stages, "timings_s": timings}


if __name__ == "__main__":
    eta_pipeline()
