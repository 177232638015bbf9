"""An HTTP load generator that reports true latencies: open loop at a constant rate, or closed loop to saturation.

Open loop: request i is due at start + i/rate whatever happened before, and its latency runs from
that due time, so a stall counts against every request it delays (no coordinated omission, and no
correction either: the percentiles are those of the requests actually sent). Closed loop: N clients
send back to back for the duration; the achieved rate is the saturation throughput. aiohttp on uvloop,
in its own process, sharing the machine's cores with the server under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from urllib.parse import urlparse

import aiohttp
import numpy as np
import psutil
import uvloop

JSON = {"content-type": "application/json"}


@dataclass
class Run:
    target: str
    rate: float | None
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int
    requests: int
    degraded: int
    server_cpu_ms_per_request: float | None = None  # CPU of every process of the server under test
    sender_late_p99_ms: float | None = None  # open loop: how late the generator itself sent requests
    sender_late_max_ms: float | None = None
    # The slowest answer counted from when the generator really sent it: a stall of the generator (two
    # cores shared with the server) moves max_ms but not this.
    max_from_send_ms: float | None = None

    @property
    def rps_per_core(self) -> float | None:
        """Requests one fully used core of the server would answer: throughput free of the load generator's share."""
        return round(1000 / self.server_cpu_ms_per_request, 1) if self.server_cpu_ms_per_request else None

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "rps_per_core": self.rps_per_core}


def server_processes(port: int) -> list[psutil.Process]:
    """The processes listening on `port` and all their children (workers, dependencies)."""
    listening = {c.pid for c in psutil.net_connections(kind="tcp")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid}
    found = {p.pid: p for pid in listening for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]}
    return list(found.values())


def cpu_seconds(processes: Sequence[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


DEGRADED = b'"degraded":true'


def summarise(target: str, rate: float | None, latencies_s: Sequence[float], errors: int, seconds: float,
              degraded: int = 0) -> Run:
    ms = np.asarray(latencies_s) * 1000
    p50, p90, p99, p999 = (float(np.percentile(ms, q)) for q in (50, 90, 99, 99.9))
    return Run(target, rate, round(len(ms) / seconds, 1), round(p50, 2), round(p90, 2), round(p99, 2), round(p999, 2),
               round(float(ms.max()), 2), errors, len(ms), degraded)


async def _send(session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """Status and body; status 0 when no answer came (connection refused or reset)."""
    try:
        async with session.post(url, data=body, headers=headers) as response:
            return response.status, await response.read()
    except aiohttp.ClientError:
        return 0, b""


def _failed(status: int) -> bool:
    return not 200 <= status < 400


async def _constant_rate(url: str, bodies: Sequence[bytes], rate: float, seconds: float, headers: dict[str, str],
                         inspect: Callable[[float, int, bytes], None] | None) -> tuple[list[float], int, int, list[float]]:
    latencies: list[float] = []
    lateness: list[float] = []
    errors = degraded = 0
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task] = set()

    async def one(i: int, due: float) -> None:
        nonlocal errors, degraded
        sent = time.perf_counter()
        status, payload = await _send(session, url, bodies[i % len(bodies)], headers)
        done = time.perf_counter()
        latencies.append(done - due)
        lateness.append(sent - due)
        errors += _failed(status)
        degraded += DEGRADED in payload
        if inspect is not None:
            inspect(done, status, payload)

    def fire(i: int, due: float) -> None:
        task = asyncio.create_task(one(i, due))
        pending.add(task)
        task.add_done_callback(pending.discard)

    def pace(start: float) -> None:
        """Due times kept by a thread: the event loop's timers tick in whole milliseconds (uvloop and
        asyncio alike), which sent requests up to 0.7 ms late at 100 req/s - latency the server never caused."""
        for i in range(int(rate * seconds)):
            due = start + i / rate
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            loop.call_soon_threadsafe(fire, i, due)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session:
        pacer = threading.Thread(target=pace, args=(time.perf_counter() + 0.05,), daemon=True)
        pacer.start()
        await asyncio.to_thread(pacer.join)
        while pending:
            await asyncio.gather(*pending)
    return latencies, errors, degraded, lateness


@contextlib.contextmanager
def _no_collections() -> Iterator[None]:
    """The generator's own garbage collections would stall it and count as server latency."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@contextlib.contextmanager
def _prompt_thread_switches() -> Iterator[None]:
    """The pacer thread, woken at a due time, waits for the GIL held by the event loop: by default up to
    5 ms (the switch interval) before the loop must hand it over."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(0.0001)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def constant_rate(target: str, url: str, bodies: Sequence[bytes], rate: float, seconds: float,
                  headers: dict[str, str] = JSON, inspect: Callable[[float, int, bytes], None] | None = None) -> Run:
    """`inspect(done, status, body)` sees every answer as it arrives (perf_counter time)."""
    with _no_collections(), _prompt_thread_switches():
        latencies, errors, degraded, lateness = uvloop.run(_constant_rate(url, bodies, rate, seconds, headers, inspect))
    run = summarise(target, rate, latencies, errors, seconds, degraded)
    # How late the generator itself sent (part of every latency above): its precision, reported.
    late_ms = np.asarray(lateness) * 1000
    run.sender_late_p99_ms, run.sender_late_max_ms = round(float(np.percentile(late_ms, 99)), 2), round(float(late_ms.max()), 2)
    run.max_from_send_ms = round(float((np.asarray(latencies) * 1000 - late_ms).max()), 2)
    return run


async def _saturate(url: str, bodies: Sequence[bytes], clients: int, seconds: float,
                    headers: dict[str, str]) -> tuple[list[float], int, int, float]:
    latencies: list[float] = []
    errors = degraded = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        began = time.perf_counter()
        end = began + seconds

        async def client(offset: int) -> None:
            nonlocal errors, degraded
            i = offset
            while (sent := time.perf_counter()) < end:
                status, payload = await _send(session, url, bodies[i % len(bodies)], headers)
                latencies.append(time.perf_counter() - sent)
                errors += _failed(status)
                degraded += DEGRADED in payload
                i += clients

        await asyncio.gather(*(client(c) for c in range(clients)))
        return latencies, errors, degraded, time.perf_counter() - began


def saturate(target: str, url: str, bodies: Sequence[bytes], clients: int, seconds: float,
             headers: dict[str, str] = JSON) -> Run:
    server = server_processes(urlparse(url).port)
    cpu_before = cpu_seconds(server)
    with _no_collections():
        latencies, errors, degraded, took = uvloop.run(_saturate(url, bodies, clients, seconds, headers))
    run = summarise(target, None, latencies, errors, took, degraded)
    run.server_cpu_ms_per_request = round((cpu_seconds(server) - cpu_before) * 1000 / max(run.requests, 1), 3)
    return run
