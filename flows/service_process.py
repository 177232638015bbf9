"""Start a real `bentoml serve` process (a built Bento or the source service), wait for readiness, stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from eta.settings import PROJECT_ROOT, Settings
from flows.prefect_api import free_port


def settings_env(settings: Settings) -> dict[str, str]:
    return {
        "ETA_DATA_DIR": str(settings.data_path),
        "ETA_FEAST_PROJECT": settings.feast_project,
        "ETA_REDIS_URL": settings.redis_url,
        "ETA_ONLINE_STORE": settings.online_store,
    }


@contextlib.contextmanager
def bento_server(
    target: str, settings: Settings, log_path: Path, startup_timeout_s: float = 120.0
) -> Iterator[str]:
    """Serve `target` (a Bento tag or `bentos.eta_service:EtaService`) on a free port; yield its base URL.

    The service reads the same data folder and Feast project as `settings`, whatever folder it runs from.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bentoml = Path(sys.executable).with_name("bentoml")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")
    server = subprocess.Popen(
        [str(bentoml), "serve", target, "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT_ROOT, env={**os.environ, **settings_env(settings)}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`bentoml serve {target}` did not become ready; see {log_path}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
