"""`make bench-faults`: Redis killed, then the EtaOrder worker killed, under 500 req/s of `/eta/order`;
what the clients saw, and whether any answered prediction is missing from the prediction log.

The service's online store and prediction log are a redis-server of this benchmark's own (append-only file
fsync'd on every write, so it comes back with its features and stream, as a managed Redis would). Each run
lasts ETA_FAULT_SECONDS (default 30 s):

1. Redis gets SIGKILL at a third of the run and is started again at two thirds. Reported: every 5xx or
   unanswered request, the slowest answer, the share answered degraded, and how long after Redis came back
   answers were whole again.
2. The EtaOrder worker (the process BentoML's supervisor started for the service, not the supervisor) gets
   SIGKILL at a third of the run; the supervisor starts a new one. Reported: requests, answered (200),
   `no_reply` (the connections the dead worker held), and the longest time without any answer.

Each run has a service of its own. After the run the service is stopped (its workers ship their spools as they
stop), then the land flow (`eta land`, on a Prefect server of this benchmark's own, up from the first landing
on) lands the log: the stream, and the spools of workers no longer running that nobody shipped. `log_lost`
counts the answered predictions (the `prediction_id` of every 200 answer) absent from the landed log (target 0);
`spool_replayed_by_land` the records the land flow took from spools. Writes `benchmarks/results/faults.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from flows.processes import free_port

REDIS_PORT = free_port()
os.environ.update({"ETA_REDIS_URL": f"redis://127.0.0.1:{REDIS_PORT}/0", "ETA_FEAST_PROJECT": "eta_faults",
                   "ETA_MODEL_NAME": "eta_faults_model"})

import orjson  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.loadgen import DEGRADED, constant_rate  # noqa: E402
from benchmarks.serving_setup import order_bodies, prepare  # noqa: E402
from eta.serving.prediction_log import spool_dir  # noqa: E402
from eta.settings import PROJECT_ROOT, Settings  # noqa: E402
from flows.land_predictions import joined_path, land_predictions, predictions_path  # noqa: E402
from flows.prefect_api import prefect_api  # noqa: E402
from flows.service_process import BENTO_SOURCE, bento_server, bento_workers  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "faults.json"
RATE = 500
Answer = tuple[float, int, bytes]  # when it arrived (perf_counter), status (0: no reply), body


class OwnRedis:
    """A redis-server on REDIS_PORT whose data survives SIGKILL (appendfsync always)."""

    def __init__(self, folder: Path) -> None:
        self.command = [shutil.which("redis-server") or "redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1",
                        "--dir", str(folder), "--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True).stdout.strip() != b"PONG":
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def answered_ids(answers: list[Answer]) -> set[str]:
    """The prediction ids the clients received: an answer acknowledged its prediction."""
    return {orjson.loads(body)["prediction_id"] for _, status, body in answers if status == 200}


def log_lost(settings: Settings, answered: set[str]) -> dict[str, int]:
    """Land the log (the land flow; a Prefect server must be up) and count answered predictions not in it."""
    summary = land_predictions()
    landed = set(pd.read_parquet(predictions_path(settings), columns=["prediction_id"])["prediction_id"])
    return {"log_lost": len(answered - landed), "spool_replayed_by_land": summary["spool_replayed"]}


def clear_prediction_log(settings: Settings) -> None:
    """Each run starts from an empty log (the stream lives in this run's fresh Redis)."""
    for folder in (predictions_path(settings), joined_path(settings), spool_dir(settings)):
        shutil.rmtree(folder, ignore_errors=True)


def redis_kill_run(url: str, bodies: list[bytes], redis: OwnRedis, seconds: float) -> tuple[dict, list[Answer]]:
    answers: list[Answer] = []
    moments: dict[str, float] = {}

    def kill() -> None:
        moments["killed"] = time.perf_counter()
        redis.kill()

    def restart() -> None:
        moments["restarted"] = time.perf_counter()
        redis.start()
        moments["answering"] = time.perf_counter()

    load = os.getloadavg()[0]
    timers = [threading.Timer(seconds / 3, kill), threading.Timer(2 * seconds / 3, restart)]
    for timer in timers:
        timer.start()
    run = constant_rate("eta_order_redis_killed", f"{url}/eta/order", bodies, RATE, seconds,
                        inspect=lambda done, status, body: answers.append((done, status, body)))
    for timer in timers:
        timer.join()
    last_degraded = max((done for done, _, body in answers if DEGRADED in body), default=moments["restarted"])
    return {
        "rate": RATE,
        "seconds": seconds,
        "requests": run.requests,
        "status_5xx": sum(1 for _, status, _ in answers if status >= 500 or status == 0),
        "max_ms": run.max_ms,
        "p99_ms": run.p99_ms,
        "p999_ms": run.p999_ms,
        "sender_late_max_ms": run.sender_late_max_ms,  # the generator's own worst lateness in sending
        "max_from_send_ms": run.max_from_send_ms,  # the slowest answer counted from its real sending
        "degraded_share": round(run.degraded / run.requests, 4),
        "redis_down_s": round(moments["restarted"] - moments["killed"], 2),
        "redis_start_s": round(moments["answering"] - moments["restarted"], 3),  # until it answered PING
        # From starting Redis again to the last degraded answer: every answer after it was whole.
        "recovery_s": round(max(0.0, last_degraded - moments["restarted"]), 3),
        "load_average_1m": round(load, 2),  # the machine's, as the run began (2 cores, maybe shared)
    }, answers


def worker_kill_run(url: str, bodies: list[bytes], seconds: float) -> tuple[dict, list[Answer]]:
    answers: list[Answer] = []
    killed: dict[str, int] = {}

    def kill() -> None:
        [worker] = bento_workers(url, "EtaOrder")
        killed["pid"] = worker.pid
        worker.kill()

    load = os.getloadavg()[0]
    timer = threading.Timer(seconds / 3, kill)
    timer.start()
    run = constant_rate("eta_order_worker_killed", f"{url}/eta/order", bodies, RATE, seconds,
                        inspect=lambda done, status, body: answers.append((done, status, body)))
    timer.join()
    now_serving = [worker.pid for worker in bento_workers(url, "EtaOrder")]
    if not now_serving or killed["pid"] in now_serving:
        raise RuntimeError(f"EtaOrder worker {killed['pid']} was not replaced: workers now {now_serving}")
    arrivals = sorted(done for done, status, _ in answers if status == 200)
    return {
        "rate": RATE,
        "seconds": seconds,
        "requests": run.requests,
        "answered": len(arrivals),
        "no_reply": sum(1 for _, status, _ in answers if status == 0),
        "status_5xx": sum(1 for _, status, _ in answers if status >= 500),
        # The longest time no answer arrived: the new worker's start-up (queued requests wait in the socket's backlog).
        "no_answer_max_s": round(max(later - earlier for earlier, later in zip(arrivals, arrivals[1:])), 2),
        "load_average_1m": round(load, 2),
    }, answers


def main() -> None:
    seconds = float(os.environ.get("ETA_FAULT_SECONDS", "30"))
    with tempfile.TemporaryDirectory() as folder:
        redis = OwnRedis(Path(folder))
        redis.start()
        try:
            settings = prepare()
            clear_prediction_log(settings)
            bodies = order_bodies(settings)
            log = settings.data_path / "logs" / "bench-faults.log"
            with bento_server(BENTO_SOURCE, settings, log) as url:
                constant_rate("warm-up", f"{url}/eta/order", bodies, 100, 2)
                result, answers = redis_kill_run(url, bodies, redis, seconds)
            # The Prefect server starts after the Redis run: its latencies are measured as before, without it.
            with prefect_api(settings.data_path / "prefect"):
                result.update(log_lost(settings, answered_ids(answers)))
                with bento_server(BENTO_SOURCE, settings, log) as url:
                    constant_rate("warm-up", f"{url}/eta/order", bodies, 100, 2)
                    worker_kill, answers = worker_kill_run(url, bodies, seconds)
                result["worker_kill"] = {**worker_kill, **log_lost(settings, answered_ids(answers))}
        finally:
            if redis.process and redis.process.poll() is None:
                redis.kill()

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {RESULTS.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
