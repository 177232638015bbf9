"""The image: the Bento packs the serving-only lock, and `bentoml serve` answers from an environment holding only it.

The clean environment is what the image's Dockerfile installs (BentoML's `env/python/requirements.txt`); building
the image itself (`bentoml containerize`) needs a Docker engine, which this machine has none of.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import bentoml
import httpx
import pytest

from eta.features.definitions import ORDER_REQUEST_FIELDS
from eta.model.registry import production_tag
from eta.orders.ingest import read_history
from eta.settings import PROJECT_ROOT
from flows.processes import free_port, server_process
from flows.service_process import own_bentoml_home, settings_env

SERVING_LOCK = PROJECT_ROOT / "requirements-serving.lock"
FULL_LOCK = PROJECT_ROOT / "requirements.lock"
# The flows' and the tests' dependencies: in requirements.lock, never in the image.
NOT_SERVING = {"prefect", "evidently", "distributed", "pytest", "hypothesis", "schemathesis", "kubernetes-validate"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;#]+)")


def pins(requirements: Path) -> dict[str, str]:
    """`name==version` lines of a requirements file, names normalized as PyPI does."""
    found = {}
    for line in requirements.read_text().splitlines():
        if match := PIN.match(line.strip()):
            found[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return found


@pytest.fixture(scope="module")
def bento(pipeline_result) -> bentoml.Bento:
    """The Bento the session's pipeline built through flows/build.py, from bentofile.yaml."""
    return bentoml.bentos.get(pipeline_result["build"])


@pytest.fixture(scope="module")
def packed_requirements(bento) -> Path:
    return Path(bento.path) / "env" / "python" / "requirements.txt"


def test_the_serving_lock_holds_the_full_locks_versions_without_the_flows_dependencies():
    serving, full = pins(SERVING_LOCK), pins(FULL_LOCK)
    assert serving, SERVING_LOCK
    assert {name: full.get(name) for name in serving} == serving, "run `make lock`: the serving lock is stale"
    assert not NOT_SERVING & serving.keys()
    assert NOT_SERVING <= full.keys()


def test_the_bento_packs_the_serving_lock_and_only_the_serving_code(bento, packed_requirements):
    assert pins(packed_requirements) == pins(SERVING_LOCK)
    source = Path(bento.path) / "src"
    assert (source / "bentos" / "eta_service.py").exists() and (source / "eta" / "serving" / "core.py").exists()
    assert not [name for name in ("flows", "monitoring", "tests", "benchmarks") if (source / name).exists()]


def test_the_bento_serves_from_an_environment_holding_only_its_packed_requirements(
        bento, packed_requirements, settings, tmp_path):
    venv = tmp_path / "venv"
    uv = str(Path(sys.executable).with_name("uv"))
    subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    # `sync`, not `install`: exactly the packed pins, nothing resolved beyond them.
    subprocess.run([uv, "pip", "sync", "--quiet", "--python", str(venv / "bin" / "python"), str(packed_requirements)],
                   check=True)
    flows_import = subprocess.run([str(venv / "bin" / "python"), "-c", "import prefect"], cwd=tmp_path,
                                  capture_output=True, text=True)
    assert flows_import.returncode != 0 and "No module named 'prefect'" in flows_import.stderr

    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= settings_env(settings) | own_bentoml_home(tmp_path / "bentoml") | {
        "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    order = read_history(settings).iloc[-1]
    body = {field: order[field].item() for field in ORDER_REQUEST_FIELDS} | {"created_at": order["created_at"].isoformat()}
    command = [str(venv / "bin" / "bentoml"), "serve", str(bento.tag), "--host", "127.0.0.1", "--port", str(port)]
    with server_process(command, f"{url}/readyz", env, tmp_path / "bento.log"):
        response = httpx.post(f"{url}/eta/order", json=body, timeout=10)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert 5 < answer["minutes"] < 180
    assert answer["model_version"] == production_tag(settings)
    assert answer["store_features_found"] and answer["market_features_found"]
