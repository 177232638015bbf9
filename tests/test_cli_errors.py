"""A user's mistake ends in one stderr line and exit code 1 (data) or 2 (usage): the real `eta` command, as a subprocess.

Every other stderr line must be a progress line (`HH:MM:SS.mmm | INFO    | ...`, Prefect's format, which the
CLI also stamps on what libraries print), and no traceback or log-shipping error may appear.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType

from eta.features.store import feature_store
from eta.model.registry import list_models
from eta.orders.schema import ORDER_COLUMNS
from eta.orders.simulate import simulate_orders
from eta.settings import PROJECT_ROOT, SimulationSettings

PROGRESS = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| (INFO|WARNING) +\| ")


def eta(*args: str, api_url: str | None, **env: str) -> subprocess.CompletedProcess:
    """Run `eta ARGS` with this test session's environment; `api_url=None` lets the command start its own Prefect server."""
    environment = {**os.environ, **env}
    environment.pop("PREFECT_API_URL", None)
    if api_url:
        environment["PREFECT_API_URL"] = api_url
    return subprocess.run([str(Path(sys.executable).with_name("eta")), *args], env=environment, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)


def error_line(result: subprocess.CompletedProcess, exit_code: int) -> str:
    """The one non-progress stderr line, after checking the exit code and that nothing else was printed."""
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Error logging to API" not in result.stderr, result.stderr[-3000:]
    others = [line for line in result.stderr.splitlines() if not PROGRESS.match(line)]
    assert len(others) == 1 and others[0].startswith("error: "), result.stderr[-3000:]
    assert result.stdout == ""
    return others[0]


@pytest.fixture
def namespace() -> str:
    return f"eta_err_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def small_orders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three days of one small market in DoorDash's layout: enough to ingest, too few for a time split at 2030."""
    path = tmp_path_factory.mktemp("orders") / "small_orders.csv"
    simulate_orders(SimulationSettings(markets=1, stores=5, days=3, seed=3)).to_csv(path, index=False)
    return path


def flow_run_of(api_url: str, orders_file: Path):
    with get_client(sync_client=True, httpx_settings={"base_url": api_url}) as client:
        runs = client.read_flow_runs(limit=200)
    return next(run for run in runs if run.parameters.get("orders_file") == str(orders_file.resolve()))


def test_a_file_in_another_layout_is_one_line_and_the_flow_run_failed_with_it(tmp_path, namespace, prefect_server,
                                                                              settings):
    path = tmp_path / "other_layout.csv"
    pd.DataFrame({"order": [1, 2], "minutes": [30, 40]}).to_csv(path, index=False)
    line = error_line(eta("ingest", "--orders", str(path), "--namespace", namespace, api_url=prefect_server), 1)
    assert str(path.resolve()) in line and "its columns: order, minutes" in line and "market_id" in line
    run = flow_run_of(prefect_server, path)
    assert run.state.type == StateType.FAILED
    assert "its columns: order, minutes" in run.state.message
    assert not settings.in_namespace(namespace).orders_path.exists(), "nothing ingested"


def test_an_empty_file_names_the_file_and_the_expected_columns(tmp_path, namespace):
    """Also the one command here that starts its own Prefect server (no PREFECT_API_URL) and stops it after the
    failure: its logs must be sent before, or "Error logging to API" follows the error line."""
    path = tmp_path / "empty.csv"
    path.write_text("")
    line = error_line(eta("ingest", "--orders", str(path), "--namespace", namespace, api_url=None), 1)
    assert line.startswith(f"error: {path.resolve()} is empty, expected")
    assert all(column in line for column in ORDER_COLUMNS)


@pytest.fixture(scope="module")
def too_few_orders(small_orders: Path, prefect_server: str, settings):
    """`eta train --orders FILE --train-until 2030-01-01` on three days of 2026: ingests and builds features, then
    the time split leaves nothing to test on. Its features are taken out of Redis afterwards."""
    namespace = f"eta_err_{uuid.uuid4().hex[:8]}"
    yield namespace, eta("train", "--orders", str(small_orders), "--namespace", namespace, "--train-until",
                         "2030-01-01", api_url=prefect_server)
    own = settings.in_namespace(namespace)
    if (own.project_path / "registry.db").exists():
        feature_store(own, "redis").teardown()


def test_a_window_with_too_few_orders_trains_nothing(too_few_orders, settings):
    namespace, result = too_few_orders
    line = error_line(result, 1)
    assert "leaves {'train': 203, 'calibration': 0, 'holdout': 0}" in line and "need at least 100 / 20 / 20" in line
    assert list_models(settings.in_namespace(namespace)) == [], "no model stored for a split that failed"


def test_an_unknown_namespace_is_a_usage_error_naming_the_known_ones(namespace, too_few_orders, prefect_server):
    known, _ = too_few_orders
    line = error_line(eta("features", "--namespace", namespace, api_url=prefect_server), 2)
    assert f"namespace '{namespace}' holds no orders" in line and known in line


def test_no_production_model_says_how_to_get_one(namespace, prefect_server):
    line = error_line(eta("build", "--namespace", namespace, api_url=prefect_server), 1)
    assert "no production model yet" in line and f"eta train --namespace {namespace}" in line


def test_an_unknown_model_tag_is_a_usage_error(namespace):
    line = error_line(eta("models", "promote", f"{namespace}_model:nosuchversion", "--namespace", namespace,
                          api_url=None), 2)
    assert f"no model '{namespace}_model:nosuchversion'" in line and f"eta models list --namespace {namespace}" in line


@pytest.mark.parametrize("day", ["2030-02-30", "30.01.2030"])
def test_a_bad_date_is_a_usage_error(day):
    line = error_line(eta("train", "--train-until", day, api_url=None), 2)
    assert line == f"error: Invalid value for '--train-until': '{day}' is not a date, expected YYYY-MM-DD or " \
                   "YYYY-MM-DDTHH:MM:SS (UTC)"


def test_debug_shows_the_traceback_of_a_mistake(namespace):
    with ThreadPoolExecutor(2) as both:  # two independent commands, each mostly imports
        results = list(both.map(lambda run: run(), [
            lambda: eta("--debug", "models", "rollback", "--namespace", namespace, api_url=None),
            lambda: eta("models", "rollback", "--namespace", namespace, api_url=None, ETA_DEBUG="1"),
        ]))
    for result in results:
        assert result.returncode == 1
        assert "Traceback" in result.stderr and "UserError" in result.stderr
        assert "no earlier production model" in result.stderr


def test_a_bug_keeps_its_traceback(namespace, settings):
    pointer = settings.in_namespace(namespace).project_path / "production_model.json"
    pointer.parent.mkdir(parents=True)
    pointer.write_text("{not json")
    result = eta("models", "rollback", "--namespace", namespace, api_url=None)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "JSONDecodeError" in result.stderr
    assert "error: " not in result.stderr
