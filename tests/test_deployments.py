"""prefect.yaml's deployments, run by a real `prefect worker` process from a real Prefect server.

The work pool is created and `prefect deploy --all` registers the deployments as a user would; the
worker runs each flow in a subprocess of its own, in a namespace of this module's (own Feast project,
data folder and model name, passed to the worker's environment), so nothing the session's other tests
hold is touched. The deployments are paused after registration: a schedule coming due mid-test would
run in this namespace and, one run at a time, cancel a run a test started. Of the feedback loop's deployments the
landing runs through the worker (the report and the decision are tested in test_weekly_report and test_retraining).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pandas as pd
import pytest
import redis
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment

from eta.features.definitions import ORDER_REQUEST_FIELDS
from eta.features.store import feature_store
from eta.model.registry import list_models, load_model, model_metadata, production_tag
from eta.orders.ingest import read_history
from eta.orders.schema import delivery_minutes
from eta.serving.api import Order
from eta.serving.core import Predictor, redis_client
from eta.serving.prediction_log import stream_key
from eta.settings import PROJECT_ROOT, Settings
from flows.land_predictions import joined_path, predictions_path
from flows.processes import free_port, server_process

NAMESPACE = f"eta_deploy_{uuid.uuid4().hex[:8]}"
PREFECT = str(Path(sys.executable).with_name("prefect"))
DECLARED = {d["name"]: d for d in yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]}
OUTAGE = timedelta(hours=3)  # how long the worker was away
RUN_TIMEOUT_S = 900  # a hang guard, not a speed check


@pytest.fixture(scope="module")
def namespace_settings(settings: Settings):
    own = settings.in_namespace(NAMESPACE)
    yield own
    redis.Redis.from_url(own.redis_url).delete(stream_key(own.feast_project))
    if (own.project_path / "registry.db").exists():
        feature_store(own, "redis").teardown()


@pytest.fixture(scope="module")
def deployments(prefect_server: str) -> dict[str, object]:
    """prefect.yaml registered through the CLI as a user would, with no prompt; then paused (see above)."""
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    created = subprocess.run([PREFECT, "work-pool", "create", "eta", "--type", "process", "--overwrite"],
                             env=env, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", "prefect.yaml"],
                              env=env, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    with get_client(sync_client=True) as client:
        held = {d.name: d for d in client.read_deployments() if d.name in DECLARED}
        for deployment in held.values():
            client.pause_deployment(deployment.id)
    return held


@pytest.fixture(scope="module")
def stale_ingest_runs(deployments, prefect_server: str) -> list[FlowRun]:
    """The ingest runs a worker away for OUTAGE finds waiting: scheduled by the server from the deployment's own
    schedule (through its scheduling endpoint for a past window: the scheduler service only schedules ahead), all
    past due (the server's late-runs service marks them Late, a few a second on this machine)."""
    ingest = deployments["ingest-every-5-minutes"]
    now = datetime.now(timezone.utc)
    response = httpx.post(f"{prefect_server}/deployments/{ingest.id}/schedule", timeout=60, json={
        "start_time": (now - OUTAGE).isoformat(), "end_time": (now - timedelta(minutes=1)).isoformat(),
        "min_time": OUTAGE.total_seconds(), "max_runs": 100})
    response.raise_for_status()
    return _runs_of(ingest.id)


@pytest.fixture(scope="module")
def worker(stale_ingest_runs, prefect_server: str, tmp_path_factory: pytest.TempPathFactory):
    """A real `prefect worker start` on the pool, in this module's namespace, started once the stale runs wait."""
    port = free_port()
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_WORKER_WEBSERVER_PORT": str(port),
           "PREFECT_WORKER_QUERY_SECONDS": "2",  # picks a triggered run up sooner than the default 10 s
           "ETA_FEAST_PROJECT": NAMESPACE, "ETA_MODEL_NAME": f"{NAMESPACE}_model"}
    command = [PREFECT, "worker", "start", "--pool", "eta", "--with-healthcheck", "--install-policy", "never"]
    with server_process(command, f"http://127.0.0.1:{port}/health", env,
                        tmp_path_factory.mktemp("worker") / "prefect-worker.log"):
        yield


def _runs_of(deployment_id) -> list[FlowRun]:
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def _run(name: str, **options) -> FlowRun:
    run = run_deployment(name, timeout=RUN_TIMEOUT_S, poll_interval=1, **options)
    assert run.state.is_final(), f"{name} still {run.state.name} after {RUN_TIMEOUT_S} s"
    return run


def test_prefect_yaml_declares_every_job_and_the_server_holds_it(deployments):
    scheduled = {"ingest-every-5-minutes": "*/5 * * * *", "features-every-15-minutes": "*/15 * * * *",
                 "retrain-daily": "30 3 * * *",
                 "land-every-15-minutes": "*/15 * * * *", "feedback-weekly": "0 3 * * 1"}
    assert set(deployments) == set(DECLARED) == set(scheduled) | {"retrain", "features-backfill", "report-week"}
    for name, deployment in deployments.items():
        declared = DECLARED[name]
        assert [s.schedule.cron for s in deployment.schedules] == ([scheduled[name]] if name in scheduled else [])
        assert deployment.work_pool_name == "eta" and deployment.entrypoint == declared["entrypoint"]
        assert deployment.parameters == declared.get("parameters", {})
        assert deployment.global_concurrency_limit.limit == 1
        strategy = deployment.concurrency_options.collision_strategy.value
        assert strategy == ("CANCEL_NEW" if name in scheduled else "ENQUEUE"), name
        assert int(deployment.job_variables["env"]["PREFECT_FLOW_DEFAULT_RETRIES"]) >= 1, name


def test_the_retrain_deployment_the_feedback_loop_runs_is_registered_and_takes_its_parameters(deployments, settings):
    with get_client(sync_client=True) as client:  # by the name run_deployment is given
        retrain = client.read_deployment_by_name(settings.retraining.deployment)
    assert retrain.entrypoint == "flows/train.py:train_model" and not retrain.schedules
    assert {"namespace", "reason"} <= set(retrain.parameter_openapi_schema["properties"])  # what flows.feedback passes


@pytest.fixture(scope="module")
def after_outage(stale_ingest_runs, worker) -> list[FlowRun]:
    """The stale runs once the worker is done with them (later tests need the orders the catch-up run brought)."""
    ids = [run.id for run in stale_ingest_runs]
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        if all(run.state.is_final() for run in runs):
            return runs
        assert time.monotonic() < deadline, [(run.name, run.state.name) for run in runs]
        time.sleep(1)


def test_a_worker_back_from_an_outage_runs_one_of_the_stale_runs_and_cancels_the_rest(after_outage):
    runs = after_outage
    assert len(runs) >= 35  # every 5 minutes over 3 hours, all past due when the worker started
    completed = [run for run in runs if run.state.type == StateType.COMPLETED]
    cancelled = [run for run in runs if run.state.type == StateType.CANCELLED]
    assert len(completed) == 1, [(run.name, run.state.name, run.state.message) for run in runs]
    assert len(cancelled) == len(runs) - 1
    assert {run.state.message for run in cancelled} == {"Deployment concurrency limit reached."}


BACKFILL = (datetime(2026, 10, 3, tzinfo=timezone.utc), datetime(2026, 10, 8, 12, tzinfo=timezone.utc))


@pytest.fixture(scope="module")
def retrained(after_outage, namespace_settings) -> dict[str, object]:
    """Features through the backfill deployment (over the orders the catch-up ingest run brought), then a retrain
    with parameters, both through the worker."""
    backfill = _run("build-features/features-backfill",
                    parameters={"start": "2026-10-03", "end": "2026-10-08T12:00:00"})
    before = {row["tag"] for row in list_models(namespace_settings)}
    retrain = _run("train-model/retrain", parameters={"train_until": "2026-10-09", "num_boost_round": 200})
    return {"backfill": backfill, "retrain": retrain, "models_before": before}


def test_features_backfill_materializes_exactly_the_range_given(retrained, namespace_settings):
    assert retrained["backfill"].state.is_completed(), retrained["backfill"].state.message
    views = feature_store(namespace_settings).list_feature_views()
    assert views and all(tuple(view.materialization_intervals[-1]) == BACKFILL for view in views)


def test_retrain_deployment_with_parameters_completes_with_a_new_model(retrained, namespace_settings):
    run = retrained["retrain"]
    assert run.state.is_completed(), run.state.message
    new = [row["tag"] for row in list_models(namespace_settings) if row["tag"] not in retrained["models_before"]]
    assert len(new) == 1
    metadata = model_metadata(new[0])
    assert metadata["training"]["num_boost_round"] == 200  # the session runs 150
    assert str(metadata["window"]["holdout_start"]).startswith("2026-10-09")
    assert metadata["gate"]["promote"] and production_tag(namespace_settings) == new[0], metadata["gate"]["reason"]


def test_a_failing_run_ends_failed_with_its_retries_spent_and_production_unchanged(retrained, namespace_settings):
    production = production_tag(namespace_settings)
    assert production is not None, "the retrain's model, promoted by the gate"
    models = list_models(namespace_settings)
    retries = int(DECLARED["retrain"]["work_pool"]["job_variables"]["env"]["PREFECT_FLOW_DEFAULT_RETRIES"])
    assert retries >= 1
    # Too early: no orders before it to train on. The retry delay is shortened for this run only.
    run = _run("train-model/retrain", parameters={"train_until": "2026-10-02"},
               job_variables={"env": {"PREFECT_FLOW_DEFAULT_RETRY_DELAY_SECONDS": "1"}})
    assert run.state.is_failed()
    assert "leaves" in run.state.message and "need at least" in run.state.message
    assert run.run_count == retries + 1 and run.empirical_policy.retries == retries
    with get_client(sync_client=True) as client:
        history = [state.name for state in client.read_flow_run_states(run.id)]
    assert history.count("AwaitingRetry") == retries, history
    assert production_tag(namespace_settings) == production
    assert list_models(namespace_settings) == models


async def _answer(orders: pd.DataFrame, settings: Settings) -> list:
    """The production model's answers to `orders`, as EtaOrder gives them (each recorded in the prediction log)."""
    tag = production_tag(settings)
    client = redis_client(settings.redis_url)
    predictor = Predictor(load_model(tag), tag, settings, client)
    try:
        return [await predictor.order(Order(**{f: row[f] for f in ORDER_REQUEST_FIELDS},
                                            created_at=row["created_at"].to_pydatetime()))
                for row in orders.to_dict("records")]
    finally:
        await predictor.drain()
        await client.aclose()


def test_land_predictions_deployment_lands_the_logged_answers_joined_with_their_orders(retrained, namespace_settings):
    orders = read_history(namespace_settings).tail(40).reset_index(drop=True)
    answers = asyncio.run(_answer(orders, namespace_settings))
    key = stream_key(namespace_settings.feast_project)
    assert redis.Redis.from_url(namespace_settings.redis_url).xlen(key) == len(orders)

    run = _run("land-predictions/land-every-15-minutes")
    assert run.state.is_completed(), run.state.message
    landed = pd.read_parquet(predictions_path(namespace_settings))
    assert sorted(landed["prediction_id"]) == sorted(answer.prediction_id for answer in answers)
    joined = pd.read_parquet(joined_path(namespace_settings)).set_index("prediction_id")
    actual = dict(zip(orders["order_id"], delivery_minutes(orders)))
    for answer in answers:
        assert joined.loc[answer.prediction_id, "order_id"] == answer.order_id
        assert joined.loc[answer.prediction_id, "actual_minutes"] == pytest.approx(actual[answer.order_id])
    assert redis.Redis.from_url(namespace_settings.redis_url).xlen(key) == 0, "landed entries are trimmed"
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[run.id])))
    assert [a.key for a in artifacts] == ["prediction-landing"]
    assert f"| landed | {len(orders)} |" in artifacts[0].data and "| unjoined | 0 |" in artifacts[0].data
