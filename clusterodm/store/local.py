"""LocalCounting: the Store's shared-counting methods for a store that one process owns.

Reservations, decaying counters, the fair queue and the identity marker must be agreed on
between instances when the store is shared (``store/redis.py`` does it in Lua). With SQLite the
cluster is one process, so the same semantics are kept in that process's memory: nothing else
could count, and nothing here needs to survive a restart (reservations lapse, a queue is rebuilt
by the dispatches that resume, flood counts start again as the original's did).

Imports only ``model`` and the standard library.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable

from clusterodm.model import Waiting


class LocalCounting:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._places: dict[str, dict[str, int]] = {}  # pool -> holder -> expiry (ms)
        self._counters: dict[str, dict[str, tuple[int, int]]] = {}  # name -> key -> count, round
        self._epochs: dict[str, int] = {}
        self._queue: dict[str, Waiting] = {}
        self._last_tag: dict[str, float] = {}
        self._virtual = 0.0
        self._seq = 0
        self._marker = secrets.token_hex(8)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _live(self, pool: str) -> dict[str, int]:
        now = self._now_ms()
        places = {h: t for h, t in self._places.get(pool, {}).items() if t > now}
        if places:
            self._places[pool] = places
        else:
            self._places.pop(pool, None)
        return places

    async def reserve(self, pool: str, holder: str, capacity: int, hold_ms: int) -> bool:
        places = self._live(pool)
        if holder not in places and len(places) >= capacity:
            return False
        places[holder] = self._now_ms() + hold_ms
        self._places[pool] = places
        return True

    async def unreserve(self, pool: str, holder: str, linger_ms: int = 0) -> None:
        places = self._live(pool)
        if holder not in places:
            return
        if linger_ms > 0:
            places[holder] = self._now_ms() + linger_ms
        else:
            del places[holder]

    async def reserved(self) -> dict[str, int]:
        return {pool: n for pool in list(self._places) if (n := len(self._live(pool)))}

    async def count(
        self, name: str, key: str, delta: int, now_ms: int, every_ms: int, factor: float
    ) -> int:
        epoch = self._epochs.setdefault(name, now_ms)
        current = max(0, (now_ms - epoch) // every_ms)
        counters = self._counters.setdefault(name, {})
        value, seen = counters.get(key, (0, current))
        for _ in range(min(current - seen, 64)):
            value = math.floor(value * factor)
            if value <= 0:
                break
        value = max(value + delta, 0)
        if value > 0:
            counters[key] = (value, current)
        else:
            counters.pop(key, None)
        return value

    async def queue_join(self, uuid: str, owner: str, images: int) -> Waiting:
        waiting = self._queue.get(uuid)
        if waiting is None:
            tag = max(self._virtual, self._last_tag.get(owner, 0.0)) + 1.0
            self._last_tag[owner] = tag
            self._seq += 1
            waiting = self._queue[uuid] = Waiting(uuid, owner, images, self._seq, tag)
        return waiting

    async def queue_leave(self, uuid: str, served: bool) -> None:
        waiting = self._queue.pop(uuid, None)
        if waiting is not None and served:
            self._virtual = max(self._virtual, waiting.tag)
        if not self._queue:
            self._last_tag.clear()  # nobody waits: no turn to remember

    async def queue_list(self) -> list[Waiting]:
        return list(self._queue.values())

    async def marker(self) -> str:
        return self._marker
