"""`make bench-faults`: Redis killed under 500 req/s of `/eta/order`, then started again.

The service's online store is a redis-server of this benchmark's own (append-only file on, so it
comes back with its features, as a managed Redis would). The load runs ETA_FAULT_SECONDS (default
30 s); Redis gets SIGKILL at a third of it and is started again at two thirds. Reported: every 5xx or
unanswered request, the slowest answer, the share answered degraded, and how long after Redis came
back answers were whole again. Writes `benchmarks/results/faults.json`.
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

from benchmarks.loadgen import DEGRADED, constant_rate  # noqa: E402
from benchmarks.serving import SERVICE  # noqa: E402
from benchmarks.serving_setup import order_bodies, prepare  # noqa: E402
from eta.settings import PROJECT_ROOT  # noqa: E402
from flows.service_process import bento_server  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "faults.json"
RATE = 500


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


def main() -> None:
    seconds = float(os.environ.get("ETA_FAULT_SECONDS", "30"))
    with tempfile.TemporaryDirectory() as folder:
        redis = OwnRedis(Path(folder))
        redis.start()
        try:
            settings = prepare()
            bodies = order_bodies(settings)
            answers: list[tuple[float, int, bool]] = []
            moments: dict[str, float] = {}

            def kill() -> None:
                moments["killed"] = time.perf_counter()
                redis.kill()

            def restart() -> None:
                moments["restarted"] = time.perf_counter()
                redis.start()
                moments["answering"] = time.perf_counter()

            with bento_server(SERVICE, settings, settings.data_path / "logs" / "bench-faults.log") as url:
                constant_rate("warm-up", f"{url}/eta/order", bodies, 100, 2)
                timers = [threading.Timer(seconds / 3, kill), threading.Timer(2 * seconds / 3, restart)]
                for timer in timers:
                    timer.start()
                run = constant_rate("eta_order_redis_killed", f"{url}/eta/order", bodies, RATE, seconds,
                                    inspect=lambda done, status, body: answers.append((done, status, DEGRADED in body)))
                for timer in timers:
                    timer.join()
        finally:
            if redis.process and redis.process.poll() is None:
                redis.kill()

    last_degraded = max((done for done, _, degraded in answers if degraded), default=moments["restarted"])
    result = {
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
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {RESULTS.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()
