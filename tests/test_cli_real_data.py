"""The data scientist's commands on the real DoorDash sample, as subprocesses against the session's Prefect server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eta.ingest import read_history
from eta.registry import list_models, production_tag
from eta.settings import PROJECT_ROOT
from tests.helpers import SHARED_ORDERS

pytestmark = pytest.mark.skipif(not SHARED_ORDERS.exists(), reason="the shared DoorDash sample lives outside the repository")
NAMESPACE = "eta_doordash_orders_sample"
REQUIRED = ["mae_min", "rmse_min", "p90_abs_err_min", "within_5_min", "within_10_min", "under_prediction_rate",
            "interval_coverage_80", "n_orders"]


def eta(*args: str, api_url: str) -> dict:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("eta")), *args],
        env={**os.environ, "PREFECT_API_URL": api_url}, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def trained(prefect_server, pipeline_result) -> dict:
    return eta("train", "--orders", str(SHARED_ORDERS), "--train-until", "2015-02-11", api_url=prefect_server)


def test_train_on_the_real_sample_beats_both_baselines_with_a_calibrated_range(trained):
    metrics, baselines = trained["metrics"], trained["baselines"]
    assert metrics["mae_min"] < baselines["platform_estimate"]["mae_min"] < baselines["naive_median"]["mae_min"]
    assert 0.78 <= metrics["interval_coverage_80"] <= 0.82
    assert trained["gate"]["promote"], trained["gate"]
    assert trained["metrics"]["n_orders"] > 5000
    assert set(trained["metrics"]["by_market"]) == {"1", "2", "3", "4", "5", "6"}


def test_evaluate_prints_the_metrics_json_of_the_production_model(trained, prefect_server, settings):
    evaluated = eta("evaluate", "--orders", str(SHARED_ORDERS), "--since", "2015-02-11", api_url=prefect_server)
    assert set(REQUIRED) <= set(evaluated)
    assert evaluated["model"] == trained["model"] == production_tag(settings.in_namespace(NAMESPACE))
    assert evaluated["n_orders"] == trained["metrics"]["n_orders"]
    assert evaluated["mae_min"] == pytest.approx(trained["metrics"]["mae_min"])


def test_real_and_simulated_orders_never_mix(trained, settings):
    real = settings.in_namespace(NAMESPACE)
    assert len(read_history(real)) == 19_633, "the same orders ingested twice (train, then evaluate) count once"
    assert not set(read_history(real)["order_id"]) & set(read_history(settings)["order_id"])
    assert production_tag(settings) != production_tag(real)
    assert all(row["tag"].startswith(real.model_name) for row in list_models(real))


def test_models_commands_roll_back_and_promote(trained, prefect_server, settings):
    real = settings.in_namespace(NAMESPACE)
    listed = eta("models", "list", "--namespace", NAMESPACE, api_url=prefect_server)
    assert listed[0]["tag"] == trained["model"] and listed[0]["production"]
    with pytest.raises(AssertionError, match="no earlier production model"):
        eta("models", "rollback", "--namespace", NAMESPACE, api_url=prefect_server)
    assert eta("models", "promote", trained["model"], "--namespace", NAMESPACE, api_url=prefect_server) == {
        "production": trained["model"]
    }
    assert production_tag(real) == trained["model"]
