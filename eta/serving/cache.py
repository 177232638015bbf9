"""The service's caches: in-process L1 (TTL, coalesced loads) and a Redis L2 shared by replicas.

L1 holds per-entity feature vectors and quote answers; L2 holds quote answers. Every key a caller
builds carries what makes an answer valid (model version, time bucket), so a new model or a new
bucket can only miss, never serve an old answer; TTLs bound how stale a feature can be.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

import redis.asyncio as aioredis

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
_ABSENT = object()


# Entries per shard of an ExpiringDict: a table's resize copies all its entries at once (~25 ms for one
# OrderedDict of 200k), so big caches are split into tables of about this size (~0.5 ms each).
SHARD_ENTRIES = 4096


class ExpiringDict(Generic[K, V]):
    """A bounded map whose entries expire: OrderedDicts of key -> (expiry, value), sharded by key hash.

    Built for the garbage collector rather than taken from cachetools: its caches keep a linked-list
    node object per key, and at a few hundred thousand entries each full collection walks them all
    (tens of ms, seen as p99.9 stalls of cold quotes). Here a string key and a tuple of numbers are
    objects the collector stops tracking, and OrderedDict's links are C structs, not objects, so the
    cache costs collections nothing. When a shard is full its oldest entry goes (insertion order; a
    TTL bounds age anyway) in O(1): a plain dict's `next(iter(d))` walks every slot earlier deletions
    emptied, tens of microseconds per insert once full (cold quotes at p99 70 ms after 40 s of traffic).
    """

    def __init__(self, maxsize: int, ttl_s: float | Callable[[K], float] = math.inf,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self.maxsize = maxsize
        self._ttl = ttl_s if callable(ttl_s) else (lambda _key: ttl_s)
        self.timer = timer  # a test moves the clock past a TTL instead of sleeping
        shards = max(1, maxsize // SHARD_ENTRIES)
        self._shards: list[OrderedDict[K, tuple[float, V]]] = [OrderedDict() for _ in range(shards)]
        self._shard_max = maxsize // shards

    def _shard(self, key: K) -> OrderedDict[K, tuple[float, V]]:
        return self._shards[hash(key) % len(self._shards)]

    def get(self, key: K, default=None):
        entry = self._shard(key).get(key)
        if entry is None or entry[0] <= self.timer():
            return default
        return entry[1]

    def __setitem__(self, key: K, value: V) -> None:
        shard = self._shard(key)
        shard.pop(key, None)
        if len(shard) >= self._shard_max:
            shard.popitem(last=False)
        shard[key] = (self.timer() + self._ttl(key), value)

    def __len__(self) -> int:
        return sum(len(shard) for shard in self._shards)

    def clear(self) -> None:
        for shard in self._shards:
            shard.clear()


class CoalescingCache(Generic[K, V]):
    """A TTL cache whose misses are loaded in one batch; concurrent misses of a key wait for one load.

    It also remembers the last value of every key beyond its TTL (`stale`), so that when the source
    is down a caller can still answer from what it knew.
    """

    def __init__(self, fresh: ExpiringDict[K, V], cacheable: Callable[[V], bool] = lambda _value: True) -> None:
        self.fresh = fresh
        self.stale: ExpiringDict[K, V] = ExpiringDict(maxsize=fresh.maxsize)
        self.cacheable = cacheable
        self._loading: dict[K, asyncio.Future[V]] = {}
        self.hits = 0
        self.misses = 0
        self.loads = 0

    async def get_many(self, keys: Sequence[K], load: Callable[[list[K]], Awaitable[list[V]]]) -> list[V]:
        """Values for `keys`; the missing ones come from one `load(missing)` call, shared with waiters."""
        found: dict[K, V | asyncio.Future[V]] = {}
        missing: list[K] = []
        waiting = False
        for key in keys:
            if key in found:
                continue
            value = self.fresh.get(key, _ABSENT)
            if value is not _ABSENT:
                self.hits += 1
                found[key] = value
            elif key in self._loading:
                self.hits += 1
                found[key] = self._loading[key]
                waiting = True
            else:
                self.misses += 1
                missing.append(key)
        if missing:
            await self._load(missing, load, found)
        if not (missing or waiting):  # all fresh: no future to wait for (a warm page's usual case)
            return [found[key] for key in keys]
        return [await _resolved(found[key]) for key in keys]

    async def _load(self, missing: list[K], load: Callable[[list[K]], Awaitable[list[V]]], found: dict) -> None:
        loop = asyncio.get_running_loop()
        futures = {key: loop.create_future() for key in missing}
        self._loading.update(futures)
        found.update(futures)
        self.loads += 1
        try:
            values = await load(missing)
        except BaseException as error:
            # The loader's own request may be cancelled (its time budget ran out): its waiters get a
            # TimeoutError of their own to handle, never a cancellation that would end their requests.
            failure = error if isinstance(error, Exception) else TimeoutError("the shared load was abandoned")
            for future in futures.values():
                if not future.done():
                    future.set_exception(failure)
                    future.exception()  # waiters re-raise it; don't log it as never retrieved
            raise
        else:
            for key, value in zip(missing, values):
                if self.cacheable(value):
                    self.fresh[key] = value
                    self.stale[key] = value
                if not futures[key].done():
                    futures[key].set_result(value)
        finally:
            for key in missing:
                self._loading.pop(key, None)


async def _resolved(value):
    # Shielded: a waiter that gives up (its own timeout) must not cancel the load the others wait for.
    return await asyncio.shield(value) if isinstance(value, asyncio.Future) else value


class SharedCache:
    """Quote answers in Redis (L2), shared by every replica, under one prefix and with a TTL."""

    def __init__(self, client: aioredis.Redis, prefix: str, ttl_s: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s

    def _key(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        # A pipeline of GETs, not MGET: on a Redis Cluster the keys live in many slots.
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(self._key(key))
            return await pipe.execute()

    async def set_many(self, items: dict[str, bytes]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(self._key(key), value, ex=self.ttl_s)
            await pipe.execute()
