"""The prediction log: every order answer, and a sample of quote answers, recorded before the answer leaves.

Written ahead, shipped behind. A record (one JSON object, orjson) is appended to the worker's spool file
(`<data>/<project>/prediction_spool/<pid>.jsonl`) with one unbuffered `write` before the answer is returned;
a shipper task on the worker's event loop moves what was appended into the Redis Stream
`eta:predictions:<project>` (capped approximately at `prediction_log.stream_max_len`, a safety net should
landing stop for days) behind the answers: up to `SHIP_BYTES` of records a pipeline, `SHIP_LINGER_S` (50 ms)
after the first of them. A pipeline that fails, or takes longer than `ship_timeout_ms`, leaves its records in the
spool and Redis alone for `retry_after_s`; they are shipped again then (a timed-out pipeline may have reached
Redis: landing is idempotent by `prediction_id`). Once the stream holds everything in the spool and the file
has grown past `ROTATE_BYTES` it is truncated, so it holds about the last thousand records.

Why not an XADD before each answer: waiting for Redis's reply put redis-server's scheduling on every
answer's path. On this machine's 2 shared cores that cost +0.3 ms at the median and +1 to +5 ms at p99 at
500 req/s (`make bench-serving`, docs/serving.md); the append costs 3-4 us, and the shipper's round trips
come between answers.

Durable: once `write` returns the bytes belong to the kernel. They survive the worker's crash or SIGKILL
(what BentoML restarts it from; `flows/land_predictions.py` ships the spools of workers that died) and a
Redis outage (the spool grows until Redis is back). Only the whole machine going down before the next
pipeline, within ~50 ms, loses them: an fsync per record costs milliseconds on a cloud disk, the whole
latency budget of an answer. A worker starting ships the spools dead workers left in its folder first (a
restarted container's; one of its own pid is moved aside).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from eta.settings import PredictionLogSettings, Settings

FIELD = b"r"  # the stream entry's one field: the record's JSON
# Records per pipeline, by size (~60 order records). A pipeline's commands are packed and its replies parsed
# on the event loop without a pause (about 20 us a record): 500 at once held answers back ~10 ms; this
# many hold them ~1 ms, and the loop serves the waiting requests between pipelines.
SHIP_BYTES = 64 * 1024
# After a record is appended, the shipper waits this long for the next ones to ride in the same pipeline.
# redis-py's cost is mostly per pipeline: at 500 records/s a pipeline every 5 ms took ~250 us of CPU a
# record, every 50 ms ~65-105 us (and an XADD awaited per answer ~300 us), measured on one slow hour.
SHIP_LINGER_S = 0.05
ROTATE_BYTES = 1024 * 1024  # a shipped spool this large is truncated
# What a missing or slow Redis raises, here and in the serving core: counted and survived, never a 5xx.
DEPENDENCY_ERRORS = (RedisError, OSError, TimeoutError)
logger = logging.getLogger(__name__)


def stream_key(project: str) -> str:
    return f"eta:predictions:{project}"


def spool_dir(settings: Settings) -> Path:
    configured = settings.prediction_log.spool_dir
    return configured / settings.feast_project if configured else settings.project_path / "prediction_spool"


def new_prediction_id() -> str:
    """48 bits of milliseconds then 80 random bits, as hex: sorts by time like a ULID, as unique as a uuid4."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


def encode(record: dict[str, object]) -> bytes:
    """One JSON object; NaN (a feature the store never had) becomes null."""
    return orjson.dumps(record)


def decode(raw: bytes) -> dict[str, object]:
    return orjson.loads(raw)


def queue_xadds(pipe, key: str, records: Iterable[bytes], config: PredictionLogSettings) -> None:
    """One XADD per record onto a pipeline (redis-py's sync or asyncio one: both only queue), capped as configured."""
    for record in records:
        pipe.xadd(key, {FIELD: record}, maxlen=config.stream_max_len, approximate=True)


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

    The spool folder is per machine (on Kubernetes, per pod): a pid is only meaningful there.
    """
    folder = spool_dir(settings)
    if not folder.exists():
        return []
    return sorted(path for path in folder.iterdir()
                  if path.suffix in (".jsonl", ".replay") and path.name.split(".")[0].isdigit()
                  and not _alive(_pid_of(path)))


def _report_stop(shipper: asyncio.Task) -> None:
    """A shipper stops only when drained; anything else leaves records in the spool until `drain` or `eta land`."""
    if not shipper.cancelled() and shipper.exception() is not None:
        logger.error("prediction log shipper stopped", exc_info=shipper.exception())


def _batches(records: list[bytes]) -> Iterator[list[bytes]]:
    """Consecutive records, at most SHIP_BYTES of them a batch (a longer record alone)."""
    batch: list[bytes] = []
    size = 0
    for record in records:
        if batch and size + len(record) > SHIP_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += len(record)
    if batch:
        yield batch


class PredictionLog:
    """One worker's log (one per process: the spool is named by pid): its spool file, shipped to the stream."""

    def __init__(self, client: aioredis.Redis, settings: Settings,
                 count: Callable[[str, int], None] = lambda event, n: None) -> None:
        self.settings = settings
        self.config: PredictionLogSettings = settings.prediction_log
        self.client = client
        self.key = stream_key(settings.feast_project)
        self.spool_path = spool_dir(settings) / f"{os.getpid()}.jsonl"
        self.count = count
        self._fd: int | None = None
        self._written = 0  # bytes appended to the spool file since it was last truncated
        self._shipped = 0  # of those, in the stream
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._shipper: asyncio.Task | None = None

    def write(self, record: dict[str, object]) -> None:
        """Append the record to the spool (in the kernel when this returns); the shipper takes it to Redis."""
        if self._fd is None:
            self._open()
        data = encode(record) + b"\n"
        written = os.write(self._fd, data)
        if written != len(data):  # a regular file writes all of it but on a full disk: the answer must fail
            raise OSError(f"prediction spool {self.spool_path}: wrote {written} of {len(data)} bytes")
        self._written += written
        self._wake.set()

    @property
    def backlog_bytes(self) -> int:
        """Appended to the spool, not yet in the stream."""
        return self._written - self._shipped

    def _open(self) -> None:
        folder = self.spool_path.parent
        folder.mkdir(parents=True, exist_ok=True)
        if self.spool_path.exists():  # an earlier process with this pid left it: shipped before new records
            self.spool_path.rename(self.spool_path.with_suffix(f".{time.time_ns()}.replay"))
        self._fd = os.open(self.spool_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        self._shipper = asyncio.get_running_loop().create_task(self._ship())
        self._shipper.add_done_callback(_report_stop)

    async def _ship(self) -> None:
        """Until drained: wait for records, let a few more come, ship them; after a failure wait `retry_after_s`.

        Stopped by `drain` through `_stop`, not by cancelling: a redis-py pipeline can finish as if a
        cancellation that reached it mid-command never came, and the shipper would wait on forever.
        """
        await self._ship_left_behind()
        while not self._stop.is_set():
            await self._wake.wait()
            if not self._stop.is_set():
                await asyncio.sleep(SHIP_LINGER_S)
            self._wake.clear()
            if not await self._ship_appended():
                await self._pause()
                self._wake.set()

    async def _pause(self) -> None:
        """`retry_after_s`, or less if `drain` asks the shipper to stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.retry_after_s):
                await self._stop.wait()

    async def _ship_appended(self) -> bool:
        """Ship the spool up to what is appended now; False (the rest stays) when Redis failed."""
        while self._shipped < self._written:
            start, end = self._shipped, self._written
            chunk = os.pread(self._fd, min(end - start, SHIP_BYTES), start)
            whole = chunk.rfind(b"\n") + 1
            if whole == 0:  # one record longer than SHIP_BYTES
                chunk = os.pread(self._fd, end - start, start)
                whole = chunk.rfind(b"\n") + 1
            if not await self._ship_batch(chunk[:whole].split(b"\n")[:-1]):
                return False
            self._shipped = start + whole
        if self._written >= ROTATE_BYTES:  # all of it in the stream, and no await since the check
            os.ftruncate(self._fd, 0)
            self._written = self._shipped = 0
        return True

    async def _ship_left_behind(self) -> None:
        """Spools of workers no longer running (a restarted container's; one with this pid was moved aside by
        `_open`): shipped, then deleted. `eta land` does the same; a spool both ship is landed once."""
        own = sorted(self.spool_path.parent.glob(f"{os.getpid()}.*.replay"))
        for path in own + dead_worker_spools(self.settings):
            try:
                records = list(spool_records(path))
            except FileNotFoundError:  # `eta land` shipped it meanwhile
                continue
            for batch in _batches(records):
                while not await self._ship_batch(batch):
                    if self._stop.is_set():
                        return  # the file stays for the next worker or `eta land`
                    await self._pause()
            path.unlink(missing_ok=True)
            logger.info("prediction spool left behind shipped", extra={"spool": str(path)})

    async def _ship_batch(self, records: list[bytes]) -> bool:
        """One pipeline of XADDs within `ship_timeout_ms`; False when Redis failed."""
        try:
            async with asyncio.timeout(self.config.ship_timeout_ms / 1000):
                async with self.client.pipeline(transaction=False) as pipe:
                    queue_xadds(pipe, self.key, records, self.config)
                    await pipe.execute()
        except DEPENDENCY_ERRORS as error:
            self.count(f"prediction_log_error:{type(error).__name__}", 1)
            return False
        self.count("prediction_log:shipped", len(records))
        return True

    async def drain(self) -> None:
        """Ship what is left and stop (before a shutdown closes the pool): one more try after a failure. Once all
        of it is in the stream the spool is deleted; what Redis did not take stays in it for the next worker on this
        machine or `eta land`, which ship dead workers' spools."""
        if self._shipper is None:
            return
        self._stop.set()
        self._wake.set()
        await asyncio.gather(self._shipper, return_exceptions=True)
        if await self._ship_appended():
            self.spool_path.unlink()
        os.close(self._fd)
        self._fd, self._shipper = None, None
        self._written = self._shipped = 0
        self._stop.clear()
