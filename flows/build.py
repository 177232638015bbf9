"""Build the Bento: `bentoml build` packs the service, the shared core and the production model.

Run: `python -m flows.build` or `eta build`. Containerizing (`bentoml containerize`) needs a Docker engine.
"""

from __future__ import annotations

import os
import subprocess
import sys

import bentoml
from bentoml.exceptions import NotFound
from prefect import flow, get_run_logger, task

from eta.model.registry import require_production_tag
from eta.settings import PROJECT_ROOT
from flows.common import settings_with

BENTO_NAME = "eta"


@task(retries=1, retry_delay_seconds=[5])
def bentoml_build(model_tag: str) -> str:
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "bentoml"), "build", "-f", "bentofile.yaml", "--output", "tag"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "ETA_MODEL_TAG": model_tag},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"bentoml build failed ({result.returncode}): {result.stderr[-2000:]}")
    return result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")


def bento_serving(model_tag: str) -> str | None:
    """The newest Bento already built around `model_tag`, if any."""
    try:
        bentos = bentoml.bentos.list(BENTO_NAME)
    except NotFound:  # no Bento built yet
        return None
    for bento in sorted(bentos, key=lambda b: b.info.creation_time, reverse=True):
        if any(str(model.tag) == model_tag for service in bento.info.services for model in service.models):
            return str(bento.tag)
    return None


@flow(name="build-bento", log_prints=True)
def build_bento(namespace: str | None = None, force: bool = False) -> str:
    """Build a Bento for the production model, unless one exists already (rebuilding would change nothing)."""
    settings = settings_with(namespace)
    tag = require_production_tag(settings, "a Bento packs the production model")
    existing = None if force else bento_serving(tag)
    if existing:
        get_run_logger().info("Bento %s already serves model %s; not rebuilding", existing, tag)
        return existing
    bento = bentoml_build(tag)
    get_run_logger().info("built Bento %s with model %s", bento, tag)
    return bento


if __name__ == "__main__":
    build_bento()
