"""Start a server process, wait until it answers, stop it with everything it spawned."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from eta.settings import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def server_process(
    command: list[str], ready_url: str, env: dict[str, str], log_path: Path, startup_timeout_s: float = 300.0
) -> Iterator[None]:
    """Run `command` until the block ends; enter the block once `ready_url` answers 200."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + startup_timeout_s
            while not answers(ready_url):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"`{' '.join(command)}` did not become ready; {log_path} ends:\n{tail}")
                time.sleep(0.5)
            yield
        finally:
            # Prefect's server and BentoML's workers shut down cleanly on SIGINT; SIGTERM can leave them running.
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
