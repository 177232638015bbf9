"""One Prefect API for a whole session of flow runs.

Without PREFECT_API_URL every Python process starts its own temporary server, which is slow and
times out on a busy 2-core machine; the demo, the CLI and the tests start one server and point
every process at it instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings


def _healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def prefect_api(home: Path, startup_timeout_s: float = 120.0) -> Iterator[str]:
    """Yield a Prefect API URL: the configured one if it answers, else a server started here and stopped after."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured and _healthy(configured):
        yield configured
        return
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).with_name("prefect")
    log = open(home / "server.log", "ab")
    server = subprocess.Popen(
        [str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _healthy(api_url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Prefect server did not start on port {port}; see {home / 'server.log'}")
            time.sleep(0.5)
        previous = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED")}
        os.environ.update({"PREFECT_API_URL": api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                yield api_url
                # Flow logs are shipped in the background: send them before the server goes away.
                APILogWorker.drain_all(timeout=10)
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    finally:
        # The server (uvicorn) shuts down cleanly on SIGINT; SIGTERM can leave it running.
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
