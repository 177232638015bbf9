"""Nothing acknowledged is lost when the EtaOrder worker dies (SIGKILL) under load: every prediction a client
received is in the landed log once BentoML has started a new worker and the land flow has run.

A real `bentoml serve` of the pipeline's Bento, with a redis-server of this test's own (append-only file
fsync'd on every write). Just before the kill, Redis stalls (SIGSTOP), so the worker dies with answered records
its shipper could not take to Redis: they are only in its spool. Redis is then killed while stalled and started
again from its append-only file: commands it never executed are gone, as after a real crash. So the test fails if
a record is written after its answer, if the spool is buffered inside the process (gone with it), or if a dead
worker's spool is not shipped (by the new worker, which ships the spools dead workers left when it starts, or by
the land flow).
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from dataclasses import dataclass

import aiohttp
import pandas as pd
import pytest

from eta.features.definitions import ORDER_REQUEST_FIELDS
from eta.model.registry import production_tag
from eta.serving.prediction_log import spool_dir
from eta.settings import get_settings
from flows.processes import free_port
from flows.service_process import bento_server, bento_workers
from tests.helpers import start_redis_server

RATE, SECONDS = 40, 10  # 400 orders
STALL_AT_S, KILL_AFTER_STALL_S = 3.0, 1.5
# Features give up after 50 ms while Redis stalls: an answer takes ~0.15 s, inside BentoML's 1 s timeout.
SERVER_ENV = {"ETA_SERVING__FEATURE_TIMEOUT_MS": "50"}


@dataclass
class Request:
    sent: float  # perf_counter
    status: int  # 0: no reply (the connection dropped)
    body: bytes


async def _orders_at_rate(url: str, bodies: list[bytes]) -> list[Request]:
    requests: list[Request] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
        async def one(body: bytes, due: float) -> None:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            sent = time.perf_counter()
            try:
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
                    requests.append(Request(sent, response.status, await response.read()))
            except (aiohttp.ClientError, TimeoutError):
                requests.append(Request(sent, 0, b""))

        start = time.perf_counter()
        await asyncio.gather(*(one(bodies[i % len(bodies)], start + i / RATE) for i in range(RATE * SECONDS)))
    return requests


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own that keeps what it acknowledged (appendfsync always)."""
    port = free_port()
    (tmp_path / "redis").mkdir()
    options = ("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path / "redis"))
    server = {"process": start_redis_server(port, *options), "start": lambda: start_redis_server(port, *options)}
    yield f"redis://127.0.0.1:{port}/0", server
    server["process"].kill()
    server["process"].wait()


def test_a_killed_worker_loses_no_answered_prediction(redis_store, own_redis, settings, pipeline_result,
                                                      prefect_server, monkeypatch, tmp_path):
    from flows.land_predictions import land_predictions, predictions_path

    own, _, orders = redis_store
    redis_url, redis = own_redis
    served = own.model_copy(update={"redis_url": redis_url})
    bodies = [json.dumps(row).encode() for row in orders.tail(200)[list(ORDER_REQUEST_FIELDS)].to_dict("records")]
    env = {**SERVER_ENV, "ETA_MODEL_TAG": production_tag(settings)}
    moments: dict[str, object] = {}

    def faults(url: str) -> None:
        try:
            time.sleep(STALL_AT_S)
            redis["process"].send_signal(signal.SIGSTOP)
            time.sleep(KILL_AFTER_STALL_S)
            [worker] = bento_workers(url, "EtaOrder")
            worker.kill()
            # From here on no request is answered by the killed worker (the supervisor reaps it later).
            moments["killed"], moments["killed_pid"] = time.perf_counter(), worker.pid
            worker.wait(timeout=60)
            redis["process"].kill()  # still stalled: what it never executed is lost
            redis["process"].wait()
            redis["process"] = redis["start"]()
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            moments["error"] = error

    with bento_server(pipeline_result["build"], served, tmp_path / "bento.log", env=env) as url:
        thread = threading.Thread(target=faults, args=(url,))
        thread.start()
        requests = asyncio.run(_orders_at_rate(f"{url}/eta/order", bodies))
        thread.join()
        if "error" in moments:
            raise moments["error"]
        now_serving = [worker.pid for worker in bento_workers(url, "EtaOrder")]
        answered = {json.loads(r.body)["prediction_id"] for r in requests if r.status == 200}
        after_restart = [r for r in requests if r.status == 200 and r.sent > moments["killed"]]
        assert now_serving and moments["killed_pid"] not in now_serving, "BentoML started a new EtaOrder worker"
        assert after_restart, "the new worker answered requests sent after the kill"
        assert len(answered) > len(after_restart), "the killed worker had answered requests too"

        # The land flow while the service runs, reading this Redis (the one the served Bento logged to): the
        # killed worker's spool is shipped by then, by the new worker or by this flow, and deleted.
        monkeypatch.setenv("ETA_REDIS_URL", redis_url)
        get_settings.cache_clear()
        land_predictions(namespace=served.feast_project)
        assert not (spool_dir(served) / f"{moments['killed_pid']}.jsonl").exists(), "the dead worker's spool shipped"

    # Stopping the service ran its shutdown hook: the new worker shipped its spool and deleted it.
    assert not [pid for pid in now_serving if (spool_dir(served) / f"{pid}.jsonl").exists()]
    land_predictions(namespace=served.feast_project)
    landed = set(pd.read_parquet(predictions_path(served), columns=["prediction_id"])["prediction_id"])
    missing = answered - landed
    assert not missing, f"{len(missing)} of {len(answered)} answered predictions are not in the landed log"
