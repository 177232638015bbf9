"""`make up` / `make down`: `python -m flows.stack` run as a user runs it, in this session's namespace.

The stack gets ports of its own and a PostgreSQL database of its own for its Prefect server (dropped after), so
nothing clashes with the session's servers; it serves the session's production model (`pipeline_result`), so it
does not run the pipeline itself. Its deployments are registered paused: a schedule coming due mid-test would
run a flow in the session's namespace.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
import yaml

from eta.settings import PROJECT_ROOT, Settings
from flows.processes import free_port
from flows.stack import PROMETHEUS_DIR, port_free

PARTS = {"prefect", "worker", "EtaQuote", "EtaOrder", "evidently", "prometheus"}
PORTS = ("PREFECT", "WORKER", "QUOTE", "ORDER", "EVIDENTLY", "PROMETHEUS")
DATABASE = f"eta_stack_{uuid.uuid4().hex[:8]}"
DECLARED = {d["name"] for d in yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]}
HANG_GUARD_S = 900  # not a speed check: `make up`'s own number is in the README


def _stack(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flows.stack", command], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)


def _postgres(query: str, database: str = "postgres") -> object:
    async def run() -> object:
        connection = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}")
        try:
            return await connection.fetchval(query)
        finally:
            await connection.close()

    return asyncio.run(run())


def _marked(ports: dict[str, int]) -> set[int]:
    """Live processes carrying this stack's environment: everything it started, and what those started."""
    marker = f"ETA_STACK__PREFECT_PORT={ports['PREFECT']}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0") \
                    and _running(int(entry.name)):
                found.add(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found - {os.getpid()}


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _state(settings: Settings) -> dict[str, tuple[int, str]]:
    path = settings.data_path / "stack" / "state.json"
    return {part["name"]: (part["pid"], part["start"]) for part in yaml.safe_load(path.read_text())["parts"]}


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    chosen: dict[str, int] = {}
    while len(set(chosen.values())) < len(PORTS):
        chosen = {name: free_port() for name in PORTS}
    return chosen


@pytest.fixture(scope="module")
def stack_env(settings: Settings, pipeline_result: dict, ports: dict[str, int]):
    env = {**os.environ, "ETA_STACK__SCHEDULES_ACTIVE": "false",
           "ETA_STACK__PREFECT_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{DATABASE}",
           **{f"ETA_STACK__{name}_PORT": str(port) for name, port in ports.items()}}
    env.pop("PREFECT_API_URL", None)  # the session's server: the stack has its own
    yield env
    _stack("down", env)  # after a test that failed midway; a no-op otherwise
    _postgres(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


@pytest.fixture(scope="module")
def first_up(stack_env, settings: Settings) -> dict[str, str]:
    """`up` from a stopped stack: the `NAME URL` lines it printed."""
    assert not (settings.data_path / "stack" / "state.json").exists()
    started = _stack("up", stack_env)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    assert re.search(r"== stack ready in \d+\.\d s", started.stdout), started.stdout
    return dict(re.findall(r"^(\S+)\s+(http://\S+)", started.stdout, flags=re.MULTILINE))


def test_up_prints_every_part_and_each_url_answers(first_up):
    assert set(first_up) == PARTS
    for name, url in first_up.items():
        # EtaQuote is not the Bento's entry service: BentoML gives it no index page, only its API and probes.
        page = f"{url}/readyz" if name == "EtaQuote" else url
        assert httpx.get(page, timeout=30, follow_redirects=True).status_code == 200, (name, page)


def test_the_services_run_apart_and_order_calls_quote_at_its_address(first_up, settings: Settings):
    page = {"market_id": 1, "stores": [{"store_id": 1, "estimated_store_to_consumer_driving_duration": 300}]}
    direct = httpx.post(f"{first_up['EtaQuote']}/eta/quote", json=page, timeout=30)
    assert direct.status_code == 200, direct.text
    answer = httpx.post(f"{first_up['EtaOrder']}/eta/quote", json=page, timeout=30)
    assert answer.status_code == 200 and answer.json() == direct.json()
    # The forwarded page was answered by the EtaQuote process: its latency histogram counts both requests (its
    # worker publishes what it counted every second; BentoML's client may retry a forward on a slow machine).
    counted = r'eta_request_duration_seconds_count\{endpoint="/eta/quote",status="200"\} (\S+)'
    deadline = time.monotonic() + 120  # a hundred flushes
    while (found := re.search(counted, httpx.get(f"{first_up['EtaQuote']}/metrics", timeout=30).text)) is None \
            or float(found.group(1)) < 2:
        assert time.monotonic() < deadline, found
        time.sleep(0.5)
    state = _state(settings)
    assert state["EtaQuote"][0] != state["EtaOrder"][0]


def test_prefect_on_postgresql_holds_the_deployments_and_an_online_worker(first_up):
    api = f"{first_up['prefect']}/api"
    held = {d["name"]: d for d in httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()}
    assert set(held) == DECLARED
    assert all(deployment["paused"] and deployment["work_pool_name"] == "eta" for deployment in held.values())
    workers = httpx.post(f"{api}/work_pools/eta/workers/filter", json={}, timeout=30).json()
    assert [worker["status"] for worker in workers] == ["ONLINE"]
    # The server keeps them in this module's PostgreSQL database, not SQLite.
    assert _postgres("SELECT count(*) FROM deployment", DATABASE) == len(DECLARED)


def test_prometheus_scrapes_both_services_with_deploy_prometheus_alert_rules(first_up, ports: dict[str, int]):
    api = f"{first_up['prometheus']}/api/v1"
    deadline = time.monotonic() + HANG_GUARD_S
    while True:  # the first scrape comes within a scrape interval
        targets = httpx.get(f"{api}/targets", timeout=30).json()["data"]["activeTargets"]
        health = {target["scrapeUrl"]: target["health"] for target in targets}
        if set(health.values()) == {"up"}:
            break
        assert time.monotonic() < deadline, health
        time.sleep(1)
    assert set(health) == {f"http://127.0.0.1:{ports['ORDER']}/metrics", f"http://127.0.0.1:{ports['QUOTE']}/metrics"}
    loaded = {group["name"] for group in httpx.get(f"{api}/rules", timeout=30).json()["data"]["groups"]}
    rule_files = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["rule_files"]
    declared = {group["name"] for name in rule_files
                for group in yaml.safe_load((PROMETHEUS_DIR / name).read_text())["groups"]}
    assert declared and loaded == declared


def test_evidently_ui_serves_the_monitoring_workspace(first_up, settings: Settings):
    assert httpx.get(f"{first_up['evidently']}/api/projects", timeout=30).status_code == 200
    command = yaml.safe_load((settings.data_path / "stack" / "state.json").read_text())["parts"]
    evidently = next(part["command"] for part in command if part["name"] == "evidently")
    assert evidently[evidently.index("--workspace") + 1] == str(settings.data_path / "evidently")


def test_up_again_starts_no_second_copy(first_up, stack_env, settings: Settings, ports: dict[str, int]):
    before, processes = _state(settings), _marked(ports)
    again = _stack("up", stack_env)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    assert dict(re.findall(r"^(\S+)\s+(http://\S+)", again.stdout, flags=re.MULTILINE)) == first_up
    assert _state(settings) == before
    assert _marked(ports) <= processes  # nothing new started (a helper of a part may have ended meanwhile)


def test_down_stops_everything_it_started_and_frees_the_ports(first_up, stack_env, settings: Settings,
                                                               ports: dict[str, int]):
    recorded, processes = _state(settings), _marked(ports)
    assert len(processes) > len(recorded)  # the parts' own workers and helpers are stopped too
    stopped = _stack("down", stack_env)
    assert stopped.returncode == 0, stopped.stderr
    assert not any(_running(pid) for pid, _ in recorded.values())
    assert not any(_running(pid) for pid in processes) and not _marked(ports)
    assert all(port_free(port) for port in ports.values()), {name: port_free(port) for name, port in ports.items()}
    assert not (settings.data_path / "stack" / "state.json").exists()
    assert "not running" in _stack("status", stack_env).stdout
