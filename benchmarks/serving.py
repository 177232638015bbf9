"""`make bench-serving`: latency and throughput of the Bento, a plain-FastAPI reference doing the same work,
and Feast's own feature server, on this machine.

The order path is measured in rounds: four servers up and warm at once - the whole Bento (`bentoml serve`,
both services; `eta_order`), the same with the prediction log off (`eta_order_unlogged`), EtaOrder alone
(`--service-name EtaOrder`, as a deployment runs it; `eta_order_alone`) and the FastAPI reference
(`fastapi_reference`) - each given the same warm-up, then every round runs each of them once at 500 req/s,
in an order rotated each round, so every target's runs are interleaved with the others' and no target
always follows the same neighbour. This machine's own stalls come at random and reach tens of milliseconds,
so one run decides nothing: each target is reported as its median over the rounds with the spread (min, max),
and the comparisons as the median of the per-round ratios (runs of one round are minutes apart at most).
Every run also records how late the generator itself sent (`sender_late_max_ms`) and the slowest answer
counted from its real sending (`max_from_send_ms`), so a stall of the generator is told from the server's.
Then saturation (closed loop) of the whole Bento and the reference, the quote service alone (cold and warm
pages) and `feast serve`, one run each.

One worker per target, against the real Redis with the bench namespace's materialized features; the load
generator (benchmarks/loadgen.py, open loop at a constant rate, true percentiles) runs in this process on
the same cores. Writes `benchmarks/results/serving.json`.

Environment: ETA_BENCH_SECONDS (default 30) for each 500 req/s run, half of it for the others;
ETA_BENCH_ROUNDS (default 5); ETA_BENCH_WARMUP_SECONDS (default 15) at 500 req/s per order server, after
3 s of saturation; ETA_BENCH_OUT (default benchmarks/results/serving.json). A smoke run, kept out of the results:
ETA_BENCH_SECONDS=5 ETA_BENCH_ROUNDS=2 ETA_BENCH_WARMUP_SECONDS=3 ETA_BENCH_OUT=/tmp/serving-smoke.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import redis
import yaml

from benchmarks.loadgen import Run, constant_rate, saturate
from benchmarks.serving_setup import feast_bodies, order_bodies, prepare, quote_bodies
from eta.features.store import feature_store_yaml
from eta.serving.prediction_log import spool_dir, stream_key
from eta.settings import Settings
from flows.processes import free_port, server_process
from flows.service_process import BENTO_SOURCE, bento_server, settings_env

RESULTS = Path(os.environ.get("ETA_BENCH_OUT") or Path(__file__).resolve().parent / "results" / "serving.json")
ORDER_RATE, QUOTE_RATE, FEAST_RATE, QUOTE_STORES, SATURATION_CLIENTS = 500, 100, 300, 50, 4
QUOTE_FILL_RATE = 150
# Reported with their spread over the rounds; the other fields are medians only.
SPREAD_FIELDS = ("p50_ms", "p99_ms", "p999_ms", "max_ms", "sender_late_max_ms", "max_from_send_ms")
COUNTED_FIELDS = ("requests", "errors", "degraded")  # totals over the repeats
# Per-round ratios (p99, p99.9) of a target against the one run beside it in the same round.
RATIOS = {"eta_order_alone/fastapi_reference": ("eta_order_alone", "fastapi_reference"),
          "eta_order/fastapi_reference": ("eta_order", "fastapi_reference")}


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


def order_servers(settings: Settings, logs: Path) -> dict[str, Callable[[], contextlib.AbstractContextManager[str]]]:
    """The four servers of the order path, by target."""
    return {
        "eta_order": lambda: bento_server(BENTO_SOURCE, settings, logs / "bench-order.log"),
        "eta_order_unlogged": lambda: bento_server(BENTO_SOURCE, settings, logs / "bench-order-unlogged.log",
                                                   env={"ETA_PREDICTION_LOG__ENABLED": "false"}),
        "eta_order_alone": lambda: bento_server(BENTO_SOURCE, settings, logs / "bench-order-alone.log", service="EtaOrder"),
        "fastapi_reference": lambda: fastapi_reference(settings, logs / "bench-fastapi.log"),
    }


def rotated(targets: list[str], round_index: int) -> list[str]:
    """Round i starts at the i-th target: over the rounds each target runs early, late and after each other."""
    shift = round_index % len(targets)
    return targets[shift:] + targets[:shift]


@contextlib.contextmanager
def empty_prediction_log(settings: Settings) -> Iterator[None]:
    """The bench namespace's prediction stream and spools removed before and after the benchmark: nothing lands
    them, and the shared Redis would keep ~1 kB per answer."""
    client = redis.Redis.from_url(settings.redis_url)

    def empty() -> None:
        client.unlink(stream_key(settings.feast_project))
        for spool in spool_dir(settings).glob("*"):
            spool.unlink(missing_ok=True)

    empty()
    try:
        yield
    finally:
        empty()
        client.close()


def summary(target: str, runs: list[Run]) -> dict[str, object]:
    """The median of every field over the repeats, with the spread of the latency fields; counts summed."""
    rows = [run.as_dict() for run in runs]
    row: dict[str, object] = {"target": target}
    for field, value in rows[0].items():
        values = [r[field] for r in rows]
        if field in COUNTED_FIELDS:
            row[field] = sum(values)
        elif field != "target" and len(set(values)) > 1 and all(isinstance(v, (int, float)) for v in values):
            row[field] = round(statistics.median(values), 2)
        elif field != "target":
            row[field] = value
    row["repeats"] = len(rows)
    row["spread"] = {field: [min(r[field] for r in rows), max(r[field] for r in rows)] for field in SPREAD_FIELDS}
    return row


def ratios(rounds: list[dict[str, Run]]) -> dict[str, dict[str, object]]:
    """Per round: target over reference for p99 and p99.9, logged minus unlogged in ms; median and spread."""

    def spread(values: list[float]) -> dict[str, object]:
        return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
                "max": round(max(values), 3), "per_round": [round(v, 3) for v in values]}

    result = {name: {"p99": spread([r[a].p99_ms / r[b].p99_ms for r in rounds]),
                     "p999": spread([r[a].p999_ms / r[b].p999_ms for r in rounds])}
              for name, (a, b) in RATIOS.items()}
    result["eta_order-eta_order_unlogged"] = {
        "p99_ms": spread([r["eta_order"].p99_ms - r["eta_order_unlogged"].p99_ms for r in rounds]),
        "p999_ms": spread([r["eta_order"].p999_ms - r["eta_order_unlogged"].p999_ms for r in rounds])}
    return result


def show(run: Run, **context: object) -> None:
    print(json.dumps({**context, **run.as_dict()}), flush=True)


def order_rounds(settings: Settings, orders: list[bytes], seconds: float, rounds_wanted: int,
                 warmup_seconds: float) -> tuple[list[dict[str, Run]], list[Run]]:
    """The interleaved 500 req/s rounds of the four order servers, then saturation of the Bento and the reference."""
    rounds: list[dict[str, Run]] = []
    saturation: list[Run] = []
    stream = redis.Redis.from_url(settings.redis_url)
    with contextlib.ExitStack() as servers:
        logs = settings.data_path / "logs"
        urls = {target: servers.enter_context(start()) for target, start in order_servers(settings, logs).items()}
        # The same warm-up for each: the first seconds at 500 req/s after a start have the worst tail.
        for url in urls.values():
            saturate("warm-up", f"{url}/eta/order", orders, 4, 3)
            constant_rate("warm-up", f"{url}/eta/order", orders, ORDER_RATE, warmup_seconds)
        for round_index in range(rounds_wanted):
            measured: dict[str, Run] = {}
            for target in rotated(list(urls), round_index):
                # Every run starts with an empty stream: the log's Redis work is the same in each.
                stream.unlink(stream_key(settings.feast_project))
                measured[target] = constant_rate(target, f"{urls[target]}/eta/order", orders, ORDER_RATE, seconds)
                show(measured[target], round=round_index)
            rounds.append(measured)
        for target in ("eta_order", "fastapi_reference"):
            saturation.append(saturate(target, f"{urls[target]}/eta/order", orders, SATURATION_CLIENTS, seconds / 2))
            show(saturation[-1])
    stream.close()
    return rounds, saturation


def quote_and_feast_runs(settings: Settings, seconds: float) -> list[Run]:
    """The quote service alone on cold and warm pages, then `feast serve`: one run each."""
    logs = settings.data_path / "logs"
    # Cold pages run on a worker that has served a while: first enough other cold pages to fill its L1
    # (then every miss evicts, the steady state of a long-running worker at peak).
    filling = int(1.1 * settings.serving.l1_max_entries / QUOTE_STORES)
    pages = quote_bodies(settings, filling + int(QUOTE_RATE * seconds / 2) + 1, QUOTE_STORES, cold=True)
    fill, cold = pages[:filling], pages[filling:]
    warm = quote_bodies(settings, 20, QUOTE_STORES, cold=False, seed=1)
    feast = feast_bodies(settings)
    runs: list[Run] = []
    with bento_server(BENTO_SOURCE, settings, logs / "bench-quote.log", service="EtaQuote") as url:
        constant_rate("fill-l1", f"{url}/eta/quote", fill, QUOTE_FILL_RATE, filling / QUOTE_FILL_RATE)
        runs.append(constant_rate("eta_quote_cold", f"{url}/eta/quote", cold, QUOTE_RATE, seconds / 2))
        show(runs[-1])
        constant_rate("warm-up", f"{url}/eta/quote", warm, QUOTE_RATE, 1)
        runs.append(constant_rate("eta_quote_warm", f"{url}/eta/quote", warm, QUOTE_RATE, seconds / 2))
        show(runs[-1])
    with feast_server(settings, logs / "bench-feast.log") as url:
        saturate("warm-up", f"{url}/get-online-features", feast, 4, 3)
        runs.append(constant_rate("feast_serve", f"{url}/get-online-features", feast, FEAST_RATE, seconds / 2))
        show(runs[-1])
        runs.append(saturate("feast_serve", f"{url}/get-online-features", feast, SATURATION_CLIENTS, seconds / 2))
        show(runs[-1])
    return runs


def on_time_runs(rounds: list[dict[str, Run]], late_limit_ms: float = 5.0) -> dict[str, dict[str, object]]:
    """Per target, the runs in which the generator was never more than `late_limit_ms` late, and their slowest
    answer: a slow answer there is the server's own (issue 18: none over 50 ms)."""
    result: dict[str, dict[str, object]] = {}
    for target in rounds[0]:
        runs = [r[target] for r in rounds if (r[target].sender_late_max_ms or 0) <= late_limit_ms]
        result[target] = {"runs": len(runs), "of": len(rounds),
                          "max_ms": max((run.max_ms for run in runs), default=None)}
    return result


def main() -> None:
    seconds = float(os.environ.get("ETA_BENCH_SECONDS", "30"))
    rounds_wanted = int(os.environ.get("ETA_BENCH_ROUNDS", "5"))
    warmup_seconds = float(os.environ.get("ETA_BENCH_WARMUP_SECONDS", "15"))
    began = time.monotonic()
    settings = prepare()
    with empty_prediction_log(settings):
        rounds, saturation = order_rounds(settings, order_bodies(settings), seconds, rounds_wanted, warmup_seconds)
        singles = saturation + quote_and_feast_runs(settings, seconds)
    targets = list(rounds[0])
    result = {
        "cores": os.cpu_count(),
        "tool": "benchmarks/loadgen.py: aiohttp on uvloop; open loop at a constant rate, latency from each "
                "request's due time (true percentiles, no correction); closed loop with "
                f"{SATURATION_CLIENTS} clients for saturation (rate null); load generator on the same cores",
        "workers_per_target": 1,
        "quote_stores": QUOTE_STORES,
        "order_rounds": {"rounds": rounds_wanted, "seconds": seconds, "rate": ORDER_RATE,
                         "warm_up": f"3 s saturation then {warmup_seconds:g} s at {ORDER_RATE} req/s, each server",
                         "order": "each round runs every target once, rotated by one each round; all four servers up"},
        # Order-path targets: the median over the rounds (`repeats`) with the spread; the others: one run each.
        "runs": [summary(target, [r[target] for r in rounds]) for target in targets]
                + [{**run.as_dict(), "repeats": 1} for run in singles],
        "comparisons": ratios(rounds),
        "generator_on_time": on_time_runs(rounds),
        "order_runs": [{"round": i, **run.as_dict()} for i, measured in enumerate(rounds) for run in measured.values()],
        "wall_minutes": round((time.monotonic() - began) / 60, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS} ({result['wall_minutes']} min)")
    subprocess.run([sys.executable, "-m", "benchmarks.table", str(RESULTS)], check=False)
    print(json.dumps({name: {k: {m: v[m] for m in ("median", "min", "max")} for k, v in measures.items()}
                      for name, measures in result["comparisons"].items()}, indent=1))
    print("runs with the generator never over 5 ms late:", json.dumps(result["generator_on_time"]))


if __name__ == "__main__":
    main()
