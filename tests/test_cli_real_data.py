"""The data scientist's commands on the real DoorDash sample, as subprocesses against the session's Prefect server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eta.model.registry import list_models, load_model, model_metadata, production_tag, save_model
from eta.orders.ingest import read_history
from eta.settings import PROJECT_ROOT
from tests.helpers import shared_orders

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
def orders_file() -> Path:
    return shared_orders()


@pytest.fixture(scope="module")
def trained(orders_file, prefect_server, pipeline_result) -> dict:
    return eta("train", "--orders", str(orders_file), "--train-until", "2015-02-11", api_url=prefect_server)


def test_train_on_the_real_sample_beats_both_baselines_with_a_calibrated_range(trained):
    metrics, baselines = trained["metrics"], trained["baselines"]
    assert metrics["mae_min"] < baselines["platform_estimate"]["mae_min"] < baselines["naive_median"]["mae_min"]
    assert 0.78 <= metrics["interval_coverage_80"] <= 0.82
    assert trained["gate"]["promote"], trained["gate"]
    assert trained["metrics"]["n_orders"] > 5000
    assert set(trained["metrics"]["by_market"]) == {"1", "2", "3", "4", "5", "6"}


def test_evaluate_prints_the_metrics_json_of_the_production_model(trained, orders_file, prefect_server, settings):
    evaluated = eta("evaluate", "--orders", str(orders_file), "--since", "2015-02-11", api_url=prefect_server)
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


def test_models_commands_promote_another_model_and_roll_back(trained, prefect_server, settings):
    real = settings.in_namespace(NAMESPACE)
    first = trained["model"]
    # A second model of this namespace, not in production: the trained one stored again under a new tag.
    second = save_model(load_model(first), model_metadata(first), real, labels={"gate": "refused"})
    api = prefect_server

    def production() -> dict[str, bool]:
        return {row["tag"]: row["production"] for row in eta("models", "list", "--namespace", NAMESPACE, api_url=api)}

    assert production() == {first: True, second: False}
    assert eta("models", "promote", second, "--namespace", NAMESPACE, api_url=api) == {"production": second}
    assert production_tag(real) == second and production() == {first: False, second: True}
    assert eta("models", "rollback", "--namespace", NAMESPACE, api_url=api) == {"production": first}
    assert production_tag(real) == first and production() == {first: True, second: False}
    with pytest.raises(AssertionError, match="no earlier production model"):
        eta("models", "rollback", "--namespace", NAMESPACE, api_url=api)
    assert production_tag(real) == first
