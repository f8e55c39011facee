"""RouteTable: uuid -> node, held in memory for every lookup, written through to the store.

Lookups are on the hot path of every poll, so they are dict reads; ``accessed`` stamps are kept
in memory and flushed to the store in batches (``flush``), never one write per request.

With a shared store (several instances) a miss is read from the store (``fetch``) and kept; an
addition is announced so the other instances fetch it (their per-user counts see every task),
and a deletion so they drop their copy (``forget``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from clusterodm.model import Route
from clusterodm.store.base import Store


class RouteTable:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._routes: dict[str, Route] = {}
        self._accessed: dict[str, int] = {}
        #: set with a shared store: tells the other instances (``route-deleted <uuid>``)
        self.announce: Callable[[str], Awaitable[None]] | None = None

    async def load(self) -> None:
        self.replace(await self._store.list_routes())

    def replace(self, routes: list[Route]) -> None:
        """Take ``routes``, just read from the store, as the memory copy."""
        self._routes = {r.uuid: r for r in routes}

    def __len__(self) -> int:
        return len(self._routes)

    def get(self, uuid: str) -> Route | None:
        return self._routes.get(uuid)

    async def fetch(self, uuid: str) -> Route | None:
        """A route another instance may have written (shared store): read it and keep it."""
        route = await self._store.get_route(uuid)
        if route is not None:
            self._routes[uuid] = route
        return route

    def forget(self, uuid: str) -> None:
        """Drop the in-memory copy only (another instance deleted the route)."""
        self._routes.pop(uuid, None)
        self._accessed.pop(uuid, None)

    def touch(self, uuid: str) -> None:
        """Note an access; written to the store at the next flush."""
        if uuid in self._routes:
            self._accessed[uuid] = int(self._clock() * 1000)

    def accessed_ms(self, uuid: str) -> int:
        route = self._routes.get(uuid)
        if route is None:
            return 0
        return self._accessed.get(uuid, route.accessed_ms)

    async def add(self, uuid: str, node_key: str, owner: str) -> Route:
        route = Route(uuid=uuid, node_key=node_key, owner=owner, accessed_ms=self._now_ms())
        await self._store.put_route(route)
        self._routes[uuid] = route
        if self.announce is not None:  # shared: every instance counts the owner's tasks
            await self.announce(f"route-added {uuid}")
        return route

    async def delete(self, uuid: str) -> None:
        if self._routes.pop(uuid, None) is not None:
            self._accessed.pop(uuid, None)
            await self._store.delete_route(uuid)
        elif self.announce is not None:  # shared: the route may be in the store only
            await self._store.delete_route(uuid)
        if self.announce is not None:
            await self.announce(f"route-deleted {uuid}")

    def forget_node(self, node_key: str) -> list[str]:
        """Drop the in-memory routes of a removed node (the store drops its own)."""
        gone = [u for u, r in self._routes.items() if r.node_key == node_key]
        for u in gone:
            del self._routes[u]
            self._accessed.pop(u, None)
        return gone

    def all(self) -> list[Route]:
        return list(self._routes.values())

    def for_owner(self, owner: str | None) -> list[Route]:
        """Routes visible to ``owner`` (None = every route, for shared-token clusters)."""
        if owner is None:
            return list(self._routes.values())
        return [r for r in self._routes.values() if r.owner == owner]

    async def flush(self) -> None:
        """Write pending ``accessed`` stamps in one batch."""
        if not self._accessed:
            return
        pending, self._accessed = self._accessed, {}
        await self._store.touch_routes(pending.items())
        for uuid, ms in pending.items():
            r = self._routes.get(uuid)
            if r is not None:
                self._routes[uuid] = Route(r.uuid, r.node_key, r.owner, ms)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)
