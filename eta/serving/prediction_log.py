"""The prediction log: every order answer, and a sample of quote answers, recorded before the answer leaves.

A record is one JSON object (orjson), added with one XADD to the Redis Stream `eta:predictions:<project>`
(capped approximately at `prediction_log.stream_max_len`, a safety net should landing stop for days). The
XADD is awaited inside `prediction_log.budget_ms`: past it, or with Redis gone, the record is appended to
the worker's spool file instead (`<data>/<project>/prediction_spool/<pid>.jsonl`). An error, or
`TIMEOUTS_BEFORE_PAUSE` timeouts in a row, leave Redis alone for `retry_after_s`, so a slow Redis costs a few
budgets, not one per request. After the next XADD that succeeds, the worker replays its spool into the
stream in the background, in small batches between answers; `flows/land_predictions.py`
replays the spools of workers that died. A record cut off by a timeout may have reached Redis and also
the spool: landing is idempotent by `prediction_id`, so it is landed once.

The spool is written with one unbuffered `write` per record, not fsync'd: once `write` returns the bytes
belong to the kernel and survive the worker's crash or SIGKILL (what BentoML restarts it from); only the
whole machine going down in the next seconds loses them. An fsync per record costs milliseconds on a
cloud disk, the whole latency budget of an answer.

No thread and no task per request: the XADD is awaited on the request's own event loop; the only
background task is a replay, at most one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eta.settings import PredictionLogSettings, Settings

FIELD = b"r"  # the stream entry's one field: the record's JSON
# XADDs per pipeline when a spool is replayed. The replay runs on the worker's event loop: a pipeline's
# commands are packed and its replies parsed without a pause (about 20 us a record), so 500 at once held
# answers back ~10 ms; 50 hold them ~1 ms, and the loop serves the waiting requests between batches.
REPLAY_BATCH = 50
DEPENDENCY_ERRORS = (RedisError, OSError, TimeoutError)
# One slow round trip may be this worker's own stall, not Redis: only that record is spooled. Pausing
# on it spooled every record for `retry_after_s` (250 at 500 req/s) and then replayed them, costing
# more than the stall; an error, or timeouts in a row, mean Redis is gone or slow: spool and wait.
TIMEOUTS_BEFORE_PAUSE = 3
TIMEOUTS = (TimeoutError, RedisTimeoutError)  # the budget's, or the client's socket timeout when that is shorter
logger = logging.getLogger(__name__)


def stream_key(project: str) -> str:
    return f"eta:predictions:{project}"


def spool_dir(settings: Settings) -> Path:
    return settings.project_path / "prediction_spool"


def new_prediction_id() -> str:
    """48 bits of milliseconds then 80 random bits, as hex: sorts by time like a ULID, as unique as a uuid4."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def encode(record: dict[str, object]) -> bytes:
    """One JSON object; NaN (a feature the store never had) becomes null."""
    return orjson.dumps(record)


def decode(raw: bytes) -> dict[str, object]:
    return orjson.loads(raw)


def spool_records(path: Path) -> Iterator[bytes]:
    """The complete records of a spool file (a line cut short by a crash mid-write cannot be parsed: skipped)."""
    with path.open("rb") as lines:
        for line in lines:
            line = line.rstrip(b"\n")
            try:
                orjson.loads(line)
            except orjson.JSONDecodeError:
                logger.warning("spool line unreadable, skipped", extra={"spool": str(path), "bytes": len(line)})
                continue
            yield line


def _pid_of(path: Path) -> int:
    return int(path.name.split(".")[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def dead_worker_spools(settings: Settings) -> list[Path]:
    """Spool files (`<pid>.jsonl`, `<pid>.<n>.replay`) of workers no longer running on this machine.

    The spool folder is per machine (a pod's data folder): a pid is only meaningful there.
    """
    folder = spool_dir(settings)
    if not folder.exists():
        return []
    return sorted(path for path in folder.iterdir()
                  if path.suffix in (".jsonl", ".replay") and path.name.split(".")[0].isdigit()
                  and not _alive(_pid_of(path)))


class PredictionLog:
    """One worker's writer: the stream when Redis answers within budget, its spool file otherwise."""

    def __init__(self, client: aioredis.Redis, settings: Settings,
                 count: Callable[[str, int], None] = lambda event, n: None) -> None:
        self.config: PredictionLogSettings = settings.prediction_log
        self.client = client
        self.key = stream_key(settings.feast_project)
        self.spool_path = spool_dir(settings) / f"{os.getpid()}.jsonl"
        self.count = count
        self._spool = None
        self._unreplayed = self.spool_path.exists() or any(spool_dir(settings).glob(f"{os.getpid()}.*.replay"))
        self._retry_at = 0.0
        self._timeouts_in_a_row = 0
        self._replaying: asyncio.Task | None = None

    async def write(self, record: dict[str, object]) -> None:
        """Record durably: in the stream, or (Redis slow or down) in the spool. Never raises for Redis."""
        data = encode(record)
        if time.monotonic() >= self._retry_at:
            try:
                async with asyncio.timeout(self.config.budget_ms / 1000):
                    await self.client.xadd(self.key, {FIELD: data}, maxlen=self.config.stream_max_len,
                                           approximate=True)
                self._timeouts_in_a_row = 0
                if self._unreplayed and self._replaying is None:
                    self._replaying = asyncio.create_task(self._replay())
                return
            except DEPENDENCY_ERRORS as error:
                timeout = isinstance(error, TIMEOUTS)
                self._timeouts_in_a_row = self._timeouts_in_a_row + 1 if timeout else 0
                if not timeout or self._timeouts_in_a_row >= TIMEOUTS_BEFORE_PAUSE:
                    self._retry_at = time.monotonic() + self.config.retry_after_s
                self.count(f"prediction_log_error:{type(error).__name__}", 1)
        self._append(data)

    def _append(self, data: bytes) -> None:
        if self._spool is None:
            self.spool_path.parent.mkdir(parents=True, exist_ok=True)
            self._spool = open(self.spool_path, "ab", buffering=0)  # noqa: SIM115 - kept open while spooling
        self._spool.write(data + b"\n")
        self._unreplayed = True
        self.count("prediction_log:spooled", 1)

    async def _replay(self) -> None:
        """Move the spool aside (new records start a new file), XADD its records, delete it once all are in."""
        self._unreplayed = False
        try:
            if self._spool is not None:
                self._spool.close()
                self._spool = None
            if self.spool_path.exists():
                self.spool_path.rename(self.spool_path.with_suffix(f".{time.time_ns()}.replay"))
            for path in sorted(self.spool_path.parent.glob(f"{os.getpid()}.*.replay")):
                replayed = 0
                batch: list[bytes] = []
                for record in spool_records(path):
                    batch.append(record)
                    if len(batch) == REPLAY_BATCH:
                        replayed += await self._add_all(batch)
                        batch = []
                        await asyncio.sleep(0)  # the requests that came in meanwhile go first
                replayed += await self._add_all(batch)
                path.unlink()
                self.count("prediction_log:replayed", replayed)
                logger.info("prediction spool replayed", extra={"spool": str(path), "records": replayed})
        except DEPENDENCY_ERRORS as error:
            self._unreplayed = True  # the file stays; the next successful XADD tries again
            self.count(f"prediction_log_error:{type(error).__name__}", 1)
        finally:
            self._replaying = None

    async def _add_all(self, records: list[bytes]) -> int:
        if not records:
            return 0
        async with self.client.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.xadd(self.key, {FIELD: record}, maxlen=self.config.stream_max_len, approximate=True)
            await pipe.execute()
        return len(records)

    async def drain(self) -> None:
        """Wait for a replay on its way (before a shutdown closes the pool)."""
        if self._replaying is not None:
            await self._replaying
