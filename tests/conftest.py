"""Shared fixtures: one isolated data folder, Feast project, BentoML home and Prefect server per test session.

Everything runs for real: Redis at 127.0.0.1:6379 (this session's own Feast project in db 14, torn
down afterwards), a Prefect server process, DuckDB as Feast's offline store, `bentoml serve`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

# Settings are read from the environment once: isolate this session before anything imports eta. Pytest
# imports this file as `conftest`; imported again by a test module (`tests.conftest`) it would run this
# set-up a second time, and the session's settings and the environment would name two different folders.
if __name__ != "conftest":
    raise ImportError("import shared test code from tests/helpers.py, not from tests.conftest")
SESSION_DIR = Path(tempfile.mkdtemp(prefix="eta-tests-"))
os.environ.update(
    {
        "ETA_DATA_DIR": str(SESSION_DIR / "data"),
        "ETA_FEAST_PROJECT": f"eta_test_{uuid.uuid4().hex[:8]}",
        "ETA_REDIS_URL": os.environ.get("ETA_TEST_REDIS_URL", "redis://127.0.0.1:6379/14"),
        "ETA_ONLINE_STORE": "redis",
        "ETA_SIMULATION__DAYS": "10",
        "ETA_SIMULATION__STORES": "40",
        "ETA_SIMULATION__MARKETS": "2",
        "ETA_TRAINING__NUM_BOOST_ROUND": "150",
        # A feature budget no slow machine overruns (under BentoML's 1 s request timeout): tests of answers
        # and caches must not turn degraded because this VM stalled; the tests of degradation set tiny
        # budgets, or a Redis that stalls, of their own.
        "ETA_SERVING__FEATURE_TIMEOUT_MS": "900",
        # LightGBM's OpenMP threads spin while they wait: on 2 busy cores a small fit took 61 s instead of 1.5 s.
        # Set before lightgbm is imported, here and in every process the tests start.
        "OMP_WAIT_POLICY": "passive",
        "BENTOML_HOME": str(SESSION_DIR / "bentoml"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
)
os.environ.pop("PREFECT_API_URL", None)

import pytest  # noqa: E402

from eta.settings import Settings, get_settings  # noqa: E402


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
def prefect_server(settings: Settings):
    from flows.prefect_api import prefect_api

    with prefect_api(SESSION_DIR / "prefect") as api_url:
        yield api_url


@pytest.fixture(scope="session")
def pipeline_result(settings: Settings, prefect_server: str) -> dict:
    """The parent flow, run once on simulated orders through the real Prefect server."""
    from flows.pipeline import eta_pipeline

    return eta_pipeline()


@pytest.fixture(scope="session")
def service_url(settings: Settings, pipeline_result: dict):
    """The Bento the pipeline built, served by a real `bentoml serve` process."""
    from flows.service_process import bento_server

    with bento_server(pipeline_result["build"], settings, SESSION_DIR / "bento.log") as url:
        yield url


@pytest.fixture(scope="session", autouse=True)
def _cleanup(settings: Settings):
    yield
    from eta.features.store import feature_store

    if (settings.project_path / "registry.db").exists():
        feature_store(settings, "redis").teardown()
    _drop_prediction_log(settings)
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture
def local_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings for a test of its own: own data folder, Feast project and model name; Feast's SQLite online store."""
    namespace = f"eta_unit_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("ETA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ETA_FEAST_PROJECT", namespace)
    monkeypatch.setenv("ETA_MODEL_NAME", f"{namespace}_model")
    monkeypatch.setenv("ETA_ONLINE_STORE", "sqlite")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def redis_store(local_settings, settings):
    """A materialized feature store of this test's own, online in the real Redis, torn down after."""
    from eta.features.store import apply_definitions, feature_store, materialize
    from eta.features.tables import write_feature_tables
    from eta.orders.ingest import ingest_batch
    from eta.orders.schema import validate_orders
    from eta.orders.simulate import simulate_orders
    from eta.settings import SimulationSettings

    own = local_settings.model_copy(update={"online_store": "redis", "redis_url": settings.redis_url,
                                            "feast_project": f"eta_push_{uuid.uuid4().hex[:8]}"})
    orders = simulate_orders(SimulationSettings(markets=2, stores=10, days=3, seed=13))
    ingest_batch(validate_orders(orders, own.validation), own)
    tables = write_feature_tables(own)
    store = feature_store(own)
    apply_definitions(store, own)
    materialize(store, tables["start"].to_pydatetime(), tables["end"].to_pydatetime())
    yield own, store, orders
    store.teardown()
    _drop_prediction_log(own)


def _drop_prediction_log(settings: Settings) -> None:
    """The prediction stream answers in a test's Feast project wrote (eta.serving.prediction_log)."""
    import redis

    from eta.serving.prediction_log import stream_key

    redis.Redis.from_url(settings.redis_url).delete(stream_key(settings.feast_project))
