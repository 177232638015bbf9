"""`make up` / `make down`: the whole local stack as production runs it, each part a background process.

Run: `python -m flows.stack up|down|status`. `up` starts a Prefect server (on PostgreSQL when it answers at
`stack.prefect_database_url`, else SQLite), the `eta` process work pool with a worker, registers prefect.yaml's
deployments, runs the pipeline once through that server when no production model exists yet, then serves
`EtaQuote` and `EtaOrder` as two processes (EtaOrder calls EtaQuote at its own address, as in Kubernetes), the
Evidently UI on the weekly reports' workspace and Prometheus scraping both services with deploy/prometheus's
alert rules. It prints `NAME URL` as each part answers, then the seconds to ready. Every process runs in a
session of its own; its pid, start time and log are recorded in `<data dir>/stack/state.json`, and `down` stops
exactly those process groups and whatever they spawned (the worker's flow runs), nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from eta.settings import PROJECT_ROOT, Settings, get_settings
from eta.storage import replace_atomically

BIN = Path(sys.executable).parent
# The environment the parts start with, taken before Feast is imported: importing it points PROMETHEUS_MULTIPROC_DIR
# at a temporary folder of this process's, removed when `up` exits (the worker's flow runs would then crash).
ENV = dict(os.environ)
PROMETHEUS_DIR = PROJECT_ROOT / "deploy" / "prometheus"
FINGERPRINT_VARIABLE = "eta_stack_deployments"  # a Prefect variable: what the server's deployments were made from
Part = dict[str, Any]  # name, url, ready_url, pid, start, log, command: one entry of the state file


def stack_dir(settings: Settings) -> Path:
    return settings.data_path / "stack"


def state_path(settings: Settings) -> Path:
    return stack_dir(settings) / "state.json"


def read_state(settings: Settings) -> list[Part]:
    path = state_path(settings)
    return json.loads(path.read_text())["parts"] if path.exists() else []


def _write_state(settings: Settings, parts: list[Part]) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps({"parts": parts}, indent=1))

    replace_atomically(state_path(settings), write)


# Processes, read from /proc: a recorded pid counts as ours only while its start time is the recorded one.

def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields from the state on (index 0: state, 2: pgid, 1: ppid, 19: start time), None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return None if fields[0] in "ZX" else fields  # a zombie has ended; only its parent has not reaped it yet


def _start_time(pid: int) -> str | None:
    fields = _stat(pid)
    return fields[19] if fields else None


def alive(part: Part) -> bool:
    return _start_time(part["pid"]) == part["start"]


def _processes() -> dict[int, list[str]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))):
            found[int(entry.name)] = fields
    return found


def _tree(parts: Iterable[Part]) -> set[int]:
    """Every live process of the parts' groups, and their descendants (a flow run starts a session of its own)."""
    table = _processes()
    # A leader's pid is not reused while its group has members; a live leader with another start time is not ours.
    groups = {part["pid"] for part in parts if alive(part) or part["pid"] not in table}
    members = {pid for pid, fields in table.items() if int(fields[2]) in groups}
    while True:
        children = {pid for pid, fields in table.items() if int(fields[1]) in members} - members
        if not children:
            return members
        members |= children


@dataclass
class Launch:
    """One `make up` under way: the parts started so far (recorded as each starts) and those that answered."""

    settings: Settings
    started: float = field(default_factory=time.monotonic)
    parts: list[Part] = field(default_factory=list)
    ready: set[str] = field(default_factory=set)

    def spawn(self, name: str, command: list[str], env: dict[str, str], url: str, ready_url: str) -> None:
        log = stack_dir(self.settings) / f"{name}.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        self.parts.append({"name": name, "url": url, "ready_url": ready_url, "pid": process.pid,
                           "start": _start_time(process.pid), "log": str(log), "command": command})
        _write_state(self.settings, self.parts)  # at once: a failing `up` (or `down`) stops what was started so far

    def report(self) -> None:
        """Print `NAME URL` for each part that answers now (once); fail naming a part that died."""
        for part in self.parts:
            if part["name"] in self.ready:
                continue
            if _answers(part["ready_url"]):
                print(f"{part['name']:<11} {part['url']}   ({time.monotonic() - self.started:.1f} s)", flush=True)
                self.ready.add(part["name"])
            elif not alive(part):
                raise RuntimeError(f"{part['name']} exited; {part['log']} ends:\n{_tail(Path(part['log']))}")

    def wait(self, names: set[str]) -> None:
        deadline = time.monotonic() + self.settings.stack.startup_timeout_s
        while True:
            self.report()
            if names <= self.ready:
                return
            if time.monotonic() > deadline:
                late = [part for part in self.parts if part["name"] in names - self.ready]
                raise RuntimeError("no answer in time from " + ", ".join(
                    f"{part['name']} at {part['ready_url']} (log {part['log']})" for part in late))
            time.sleep(0.3)

    def run(self, name: str, command: list[str], env: dict[str, str]) -> None:
        """A one-off command (work pool, deploy), its output appended to <name>.log; parts are reported meanwhile."""
        log = stack_dir(self.settings) / f"{name}.log"
        deadline = time.monotonic() + self.settings.stack.startup_timeout_s
        with open(log, "ab") as out:
            process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
            try:
                while process.poll() is None:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"`{' '.join(command)}` did not finish in time (log {log})")
                    self.report()
                    time.sleep(0.3)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        if process.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed ({process.returncode}); {log} ends:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As the servers bind: connections of a stopped server in TIME_WAIT do not hold its port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# The parts.

def prefect_database(settings: Settings) -> str | None:
    """The PostgreSQL URL for Prefect's server when PostgreSQL answers there (creating the database), else None."""
    import asyncio

    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(settings.stack.prefect_database_url)
    server = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)

    async def ensure() -> None:
        connection = await asyncpg.connect(server, timeout=5)
        try:
            if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", url.database):
                await connection.execute(f'CREATE DATABASE "{url.database}"')
        finally:
            await connection.close()

    try:
        asyncio.run(ensure())
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as error:
        print(f"   PostgreSQL did not answer at {url.render_as_string()} ({error}): Prefect on SQLite", flush=True)
        return None
    return settings.stack.prefect_database_url


def prometheus_config(settings: Settings) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with the stack's own ports as its jobs' targets, its rule files by full path."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    ports = {"eta-order": settings.stack.order_port, "eta-quote": settings.stack.quote_port}
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config.get("rule_files", [])]
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    return config


def _serving_target(settings: Settings) -> str:
    """The Bento built around the production model, as production serves it; else the service source."""
    from eta.model.registry import require_production_tag
    from flows.build import bento_serving
    from flows.service_process import BENTO_SOURCE

    return bento_serving(require_production_tag(settings, "the services serve it")) or BENTO_SOURCE


def _start_services(launch: Launch, env: dict[str, str]) -> None:
    from flows.service_process import own_bentoml_home, settings_env

    settings = launch.settings
    stack = settings.stack
    target = _serving_target(settings)
    print(f"   serving {target}", flush=True)
    env = {**env, **settings_env(settings)}
    start = [sys.executable, "-m", "bentoml_cli._internal.start", "start-http-server", target, "--host", "127.0.0.1"]
    quote_url, order_url = f"http://127.0.0.1:{stack.quote_port}", f"http://127.0.0.1:{stack.order_port}"
    homes = {name: own_bentoml_home(stack_dir(settings) / f"bentoml-{name}") for name in ("EtaQuote", "EtaOrder")}
    launch.spawn("EtaQuote", start + ["--service-name", "EtaQuote", "--port", str(stack.quote_port)],
           {**env, **homes["EtaQuote"]}, quote_url, f"{quote_url}/readyz")
    # As deployed (eta.serving.kubernetes): EtaOrder calls EtaQuote at its address instead of starting one of its own.
    launch.spawn("EtaOrder", start + ["--service-name", "EtaOrder", "--port", str(stack.order_port),
                                      "--depends", f"EtaQuote={quote_url}"],
           {**env, **homes["EtaOrder"]}, order_url, f"{order_url}/readyz")


def deployments_fingerprint() -> str:
    """What the registered deployments are made of: prefect.yaml and its entry points' files (names, parameters)."""
    declared = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
    files = sorted({deployment["entrypoint"].split(":")[0] for deployment in declared})
    digest = hashlib.sha256()
    for name in ["prefect.yaml", *files]:
        digest.update(name.encode() + b"\0" + (PROJECT_ROOT / name).read_bytes())
    return digest.hexdigest()[:16]


def _register_deployments(launch: Launch, api_url: str, env: dict[str, str]) -> None:
    """`prefect deploy --all`, skipped when this server holds every deployment from the same prefect.yaml and flows
    (its database outlives `make down`; deploying imports every flow, the longest step of a restart)."""
    declared = {d["name"] for d in yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]}
    fingerprint = deployments_fingerprint()
    variable = httpx.get(f"{api_url}/variables/name/{FINGERPRINT_VARIABLE}", timeout=30)
    held = {d["name"]: d for d in _deployments(api_url) if d["name"] in declared}
    if variable.status_code == 200 and variable.json()["value"] == fingerprint and set(held) == declared:
        print("   deployments already registered from this prefect.yaml and flows/", flush=True)
    else:
        prefect = str(BIN / "prefect")
        launch.run("deploy", [prefect, "work-pool", "create", "eta", "--type", "process", "--overwrite"], env)
        launch.run("deploy", [prefect, "--no-prompt", "deploy", "--all", "--prefect-file", "prefect.yaml"], env)
        if variable.status_code == 200:
            httpx.patch(f"{api_url}/variables/name/{FINGERPRINT_VARIABLE}", json={"value": fingerprint},
                        timeout=30).raise_for_status()
        else:
            httpx.post(f"{api_url}/variables/", json={"name": FINGERPRINT_VARIABLE, "value": fingerprint},
                       timeout=30).raise_for_status()
        held = {d["name"]: d for d in _deployments(api_url) if d["name"] in declared}
    action = "resume_deployment" if launch.settings.stack.schedules_active else "pause_deployment"
    for deployment in held.values():
        httpx.post(f"{api_url}/deployments/{deployment['id']}/{action}", timeout=30).raise_for_status()


def _deployments(api_url: str) -> list[dict[str, Any]]:
    return httpx.post(f"{api_url}/deployments/filter", json={}, timeout=30).raise_for_status().json()


def _run_pipeline(api_url: str) -> None:
    """The parent flow once, in this process, through the stack's server (as `make demo` runs it)."""
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.pipeline import eta_pipeline

    print("   no production model yet: running the pipeline once through the stack's Prefect server", flush=True)
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        try:
            result = eta_pipeline()
        finally:
            APILogWorker.drain_all(timeout=10)
    print(f"   pipeline done: model {result['train']['model']}, Bento {result['build']}", flush=True)


def _start(launch: Launch) -> None:
    from eta.model.registry import production_tag

    settings = launch.settings
    stack = settings.stack
    home = stack_dir(settings)
    api_url = f"http://127.0.0.1:{stack.prefect_port}/api"
    env = {**ENV, "PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    server_env = {**env, "PREFECT_HOME": str(home / "prefect")}
    server_env.pop("PREFECT_API_URL")
    database = prefect_database(settings)
    if database:
        server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = database
    launch.spawn("prefect", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(stack.prefect_port)],
                 server_env, f"http://127.0.0.1:{stack.prefect_port}", f"{api_url}/health")
    workspace = settings.data_path / "evidently"
    workspace.mkdir(parents=True, exist_ok=True)
    evidently_url = f"http://127.0.0.1:{stack.evidently_port}"
    launch.spawn("evidently", [str(BIN / "evidently"), "ui", "--workspace", str(workspace),
                               "--host", "127.0.0.1", "--port", str(stack.evidently_port)],
                 env, evidently_url, f"{evidently_url}/api/version")
    config = home / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(settings), sort_keys=False))
    prometheus_url = f"http://127.0.0.1:{stack.prometheus_port}"
    launch.spawn("prometheus", [str(stack.prometheus_binary), f"--config.file={config}",
                                f"--storage.tsdb.path={home / 'prometheus'}",
                                f"--web.listen-address=127.0.0.1:{stack.prometheus_port}"],
                 env, prometheus_url, f"{prometheus_url}/-/ready")
    has_model = production_tag(settings) is not None
    if has_model:  # the services load while Prefect starts
        _start_services(launch, env)

    launch.wait({"prefect"})
    _register_deployments(launch, api_url, env)
    worker_url = f"http://127.0.0.1:{stack.worker_port}/health"
    launch.spawn("worker", [str(BIN / "prefect"), "worker", "start", "--pool", "eta", "--with-healthcheck",
                            "--install-policy", "never"],
                 {**env, "PREFECT_WORKER_WEBSERVER_PORT": str(stack.worker_port)}, worker_url, worker_url)
    if not has_model:
        launch.wait({"evidently", "prometheus", "worker"})
        _run_pipeline(api_url)
        _start_services(launch, env)
    launch.wait({part["name"] for part in launch.parts})


def up(settings: Settings) -> int:
    parts = read_state(settings)
    if parts:
        running = [part for part in parts if alive(part)]
        if len(running) == len(parts):
            print(f"the stack is already running (state: {state_path(settings)}); `make down` stops it")
            for part in parts:
                print(f"{part['name']:<11} {part['url']}")
            return 0
        if running:
            gone = ", ".join(part["name"] for part in parts if not alive(part))
            print(f"the stack is partly running ({gone} gone): `make down`, then `make up`", file=sys.stderr)
            return 1
        state_path(settings).unlink()  # a stack that ended without `make down` (a reboot)
    stack = settings.stack
    if not stack.prometheus_binary.exists():
        print(f"Prometheus not found at {stack.prometheus_binary}: apt-get install prometheus "
              "(or set ETA_STACK__PROMETHEUS_BINARY)", file=sys.stderr)
        return 1
    ports = {"prefect": stack.prefect_port, "worker": stack.worker_port, "EtaQuote": stack.quote_port,
             "EtaOrder": stack.order_port, "evidently": stack.evidently_port, "prometheus": stack.prometheus_port}
    taken = [f"{name} {port}" for name, port in ports.items() if not port_free(port)]
    if taken:
        print(f"ports in use: {', '.join(taken)} (settings stack.*_port / ETA_STACK__*_PORT)", file=sys.stderr)
        return 1

    stack_dir(settings).mkdir(parents=True, exist_ok=True)
    print(f"== eta stack: data in {settings.data_path}, logs and state in {stack_dir(settings)}", flush=True)
    launch = Launch(settings)
    try:
        _start(launch)
    except BaseException:
        print("make up failed: stopping what it started", file=sys.stderr)
        down(settings)
        raise
    print(f"== stack ready in {time.monotonic() - launch.started:.1f} s; `make down` stops it", flush=True)
    return 0


def down(settings: Settings, grace_s: float = 20.0) -> int:
    parts = read_state(settings)
    if not parts:
        print("the stack is not running (no state file)")
        return 0
    # The Prefect server last: the worker and the flow runs report their end to it.
    server = [part for part in parts if part["name"] == "prefect"]
    for wave in ([part for part in parts if part not in server], server):
        _stop(_tree(wave), grace_s)
        for part in wave:
            print(f"stopped {part['name']:<11} (pid {part['pid']})")
    state_path(settings).unlink()
    return 0


def _stop(pids: set[int], grace_s: float) -> None:
    # SIGINT: Prefect's server and worker and BentoML's workers shut down cleanly on it; SIGTERM can leave them.
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # ended meanwhile
            os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while (pids := {pid for pid in pids if _stat(pid)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    while any(_stat(pid) for pid in pids):  # gone (and its ports closed) before `down` returns
        time.sleep(0.1)


def status(settings: Settings) -> int:
    parts = read_state(settings)
    if not parts:
        print("the stack is not running")
        return 0
    for part in parts:
        state = "answering" if alive(part) and _answers(part["ready_url"]) else "up" if alive(part) else "gone"
        print(f"{part['name']:<11} {part['url']:<32} pid {part['pid']:<8} {state}")
    return 0


def main(argv: list[str] | None = None) -> int:
    command = (argv if argv is not None else sys.argv[1:]) or ["up"]
    actions = {"up": up, "down": down, "status": status}
    if len(command) != 1 or command[0] not in actions:
        print("usage: python -m flows.stack up|down|status", file=sys.stderr)
        return 2
    return actions[command[0]](get_settings())


if __name__ == "__main__":
    sys.exit(main())
