"""One Prefect API for a whole session of flow runs.

Without PREFECT_API_URL every Python process starts its own temporary server, which is slow and
times out on a busy 2-core machine; the demo, the CLI and the tests start one server and point
every process at it instead.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.processes import answers, free_port, server_process


@contextlib.contextmanager
def prefect_api(home: Path) -> Iterator[str]:
    """Yield a Prefect API URL: the configured one if it answers, else a server started here and stopped after."""
    configured = os.environ.get("PREFECT_API_URL")
    if configured and answers(f"{configured}/health"):
        yield configured
        return
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    command = [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with server_process(command, f"{api_url}/health", env, home / "server.log"):
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = api_url  # for the processes flows start
        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                try:
                    yield api_url
                finally:
                    # Flow logs are shipped in the background: send them before the server goes away, also
                    # after a flow failed (else the shipper reports "Error logging to API" once it has).
                    APILogWorker.drain_all(timeout=10)
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous
