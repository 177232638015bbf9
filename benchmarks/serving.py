"""`make bench-serving`: latency and throughput of the two Bento services, a plain-FastAPI reference
doing the same work, and Feast's own feature server, one after the other on this machine.

Each target runs alone (one worker) against the real Redis with the bench namespace's materialized
features; the load generator (benchmarks/loadgen.py, open loop at a constant rate, true percentiles)
runs in this process on the same 2 cores. Writes `benchmarks/results/serving.json`.
Durations: ETA_BENCH_SECONDS (default 60) for the 500 req/s runs, half of it for the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from benchmarks.loadgen import Run, constant_rate, saturate
from benchmarks.serving_setup import feast_bodies, order_bodies, prepare, quote_bodies
from eta.features.store import feature_store_yaml
from eta.settings import PROJECT_ROOT, Settings
from flows.processes import free_port, server_process
from flows.service_process import bento_server, settings_env

RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"
SERVICE = "bentos.eta_service:EtaOrder"
ORDER_RATE, QUOTE_RATE, FEAST_RATE, QUOTE_STORES, SATURATION_CLIENTS = 500, 100, 300, 50, 4
QUOTE_FILL_RATE = 150


@contextlib.contextmanager
def fastapi_reference(settings: Settings, log: Path):
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "benchmarks.fastapi_reference:app", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1", "--loop", "uvloop", "--http", "httptools", "--no-access-log"]
    # Multiprocess metrics as in a Bento worker, in a folder of its own (importing Feast points
    # PROMETHEUS_MULTIPROC_DIR at one shared folder, where counts would pile up across runs).
    with tempfile.TemporaryDirectory() as metrics_dir, server_process(
            command, f"http://127.0.0.1:{port}/docs",
            {**os.environ, **settings_env(settings), "PROMETHEUS_MULTIPROC_DIR": metrics_dir}, log):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def feast_server(settings: Settings, log: Path):
    """`feast serve` of the namespace's registry and Redis online store: features alone, no model."""
    port = free_port()
    with tempfile.TemporaryDirectory() as repo:
        Path(repo, "feature_store.yaml").write_text(yaml.safe_dump(feature_store_yaml(settings, "redis")))
        command = [str(Path(sys.executable).with_name("feast")), "-c", repo, "serve", "-h", "127.0.0.1", "-p", str(port),
                   "--workers", "1", "--no-access-log", "--max-requests", "0"]
        with server_process(command, f"http://127.0.0.1:{port}/health", dict(os.environ), log):
            yield f"http://127.0.0.1:{port}"


def main() -> None:
    seconds = float(os.environ.get("ETA_BENCH_SECONDS", "60"))
    settings = prepare()
    logs = settings.data_path / "logs"
    orders, feast = order_bodies(settings), feast_bodies(settings)
    # Cold pages run on a worker that has served a while: first enough other cold pages to fill its L1
    # (then every miss evicts, the steady state of a long-running worker at peak).
    filling = int(1.1 * settings.serving.l1_max_entries / QUOTE_STORES)
    pages = quote_bodies(settings, filling + int(QUOTE_RATE * seconds / 2) + 1, QUOTE_STORES, cold=True)
    fill, cold = pages[:filling], pages[filling:]
    warm = quote_bodies(settings, 20, QUOTE_STORES, cold=False, seed=1)
    runs: list[Run] = []

    def record(run: Run) -> None:
        runs.append(run)
        print(json.dumps(run.as_dict()), flush=True)

    with bento_server(SERVICE, settings, logs / "bench-order.log") as url:
        saturate("warm-up", f"{url}/eta/order", orders, 4, 3)
        record(constant_rate("eta_order", f"{url}/eta/order", orders, ORDER_RATE, seconds))
        record(saturate("eta_order", f"{url}/eta/order", orders, SATURATION_CLIENTS, seconds / 2))
    with bento_server(SERVICE, settings, logs / "bench-quote.log", service="EtaQuote") as url:
        constant_rate("fill-l1", f"{url}/eta/quote", fill, QUOTE_FILL_RATE, filling / QUOTE_FILL_RATE)
        record(constant_rate("eta_quote_cold", f"{url}/eta/quote", cold, QUOTE_RATE, seconds / 2))
        constant_rate("warm-up", f"{url}/eta/quote", warm, QUOTE_RATE, 1)
        record(constant_rate("eta_quote_warm", f"{url}/eta/quote", warm, QUOTE_RATE, seconds / 2))
    with fastapi_reference(settings, logs / "bench-fastapi.log") as url:
        saturate("warm-up", f"{url}/eta/order", orders, 4, 3)
        record(constant_rate("fastapi_reference", f"{url}/eta/order", orders, ORDER_RATE, seconds))
        record(saturate("fastapi_reference", f"{url}/eta/order", orders, SATURATION_CLIENTS, seconds / 2))
    with feast_server(settings, logs / "bench-feast.log") as url:
        saturate("warm-up", f"{url}/get-online-features", feast, 4, 3)
        record(constant_rate("feast_serve", f"{url}/get-online-features", feast, FEAST_RATE, seconds / 2))
        record(saturate("feast_serve", f"{url}/get-online-features", feast, SATURATION_CLIENTS, seconds / 2))

    result = {
        "cores": os.cpu_count(),
        "tool": "benchmarks/loadgen.py: aiohttp on uvloop; open loop at a constant rate, latency from each "
                "request's due time (true percentiles, no correction); closed loop with "
                f"{SATURATION_CLIENTS} clients for saturation (rate null); load generator on the same cores",
        "workers_per_target": 1,
        "quote_stores": QUOTE_STORES,
        "runs": [{k: v for k, v in run.as_dict().items()} for run in runs],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(PROJECT_ROOT)}")
    subprocess.run([sys.executable, "-m", "benchmarks.table", str(RESULTS)], check=False)


if __name__ == "__main__":
    main()
