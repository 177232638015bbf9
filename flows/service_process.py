"""Start a real `bentoml serve` process (a built Bento or the source service), wait for readiness, stop it."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import psutil

from eta.settings import Settings
from flows.processes import free_port, server_process

WORKER_MODULE = "_bentoml_impl.worker.service"  # what BentoML 1.4 runs a service's worker as
BENTO_SOURCE = "bentos.eta_service:EtaOrder"  # bentofile.yaml's `service`: the Bento served from source


def settings_env(settings: Settings) -> dict[str, str]:
    return {
        "ETA_DATA_DIR": str(settings.data_path),
        "ETA_FEAST_PROJECT": settings.feast_project,
        "ETA_REDIS_URL": settings.redis_url,
        "ETA_ONLINE_STORE": settings.online_store,
    }


def own_bentoml_home(folder: Path) -> dict[str, str]:
    """The env of a BentoML home of a server's own in `folder`, sharing the real home's models and Bentos.

    BentoML keeps a server's Prometheus files in `<home>/prometheus_multiproc_dir` and empties that folder
    whenever a server starts: servers sharing one home erase each other's metrics (a pod has its own home).
    """
    shared = Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")
    folder.mkdir(parents=True, exist_ok=True)
    for store in ("models", "bentos"):
        (shared / store).mkdir(parents=True, exist_ok=True)
        link = folder / store
        if not link.exists():
            link.symlink_to(shared / store, target_is_directory=True)
    return {"BENTOML_HOME": str(folder)}


@contextlib.contextmanager
def bento_server(target: str, settings: Settings, log_path: Path, env: dict[str, str] | None = None,
                 service: str | None = None) -> Iterator[str]:
    """Serve `target` (a Bento tag or `BENTO_SOURCE`) on a free port; yield its base URL.

    With `service`, only that service of the Bento runs, as a deployment runs each service on its own
    (BentoML's own per-service entry point). The service reads the same data folder and Feast project
    as `settings`, whatever folder it runs from.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if service:
        command = [sys.executable, "-m", "bentoml_cli._internal.start", "start-http-server", target,
                   "--service-name", service]
    else:
        command = [str(Path(sys.executable).with_name("bentoml")), "serve", target]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    home = own_bentoml_home(log_path.parent / f"bentoml-home-{port}")
    with server_process(command, f"{url}/readyz", {**os.environ, **settings_env(settings), **home, **(env or {})},
                        log_path):
        yield url


def bento_workers(url: str, service: str) -> list[psutil.Process]:
    """The worker processes of `service` (`EtaOrder`, `EtaQuote`) under the `bentoml serve` answering at `url`.

    BentoML 1.4's supervisor (a circus arbiter: the `bentoml serve` process) opens the listening socket and
    starts each worker as `python -m _bentoml_impl.worker.service <bento> ... --service-name <name>`, handing
    it the socket; when a worker dies it starts another. The socket is shared, and psutil names one of its
    holders: the supervisor, or a worker whose parent is the supervisor.
    """
    port = urlparse(url).port
    [holder] = {psutil.Process(c.pid) for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid}
    supervisor = holder.parent() if WORKER_MODULE in holder.cmdline() else holder
    workers = []
    for child in supervisor.children(recursive=True):
        try:
            command = child.cmdline()
        except psutil.NoSuchProcess:  # a worker just killed (a zombie until the supervisor reaps it)
            continue
        named = command[command.index("--service-name") + 1] if "--service-name" in command[:-1] else None
        if WORKER_MODULE in command and named == service:
            workers.append(child)
    return workers
