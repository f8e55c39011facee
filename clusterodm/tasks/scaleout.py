"""ScaleOut: several proxy instances on one shared store act as one cluster.

Owns what only exists when the store is shared (``--store redis://...``): this instance's id,
the per-task dispatch claims, the leader lease, the listener for other instances' notices and
the periodic scan that re-reads the node list and the task table and takes over tasks whose
claim lapsed (their instance died). Sees the store through ``Coordination`` and ``Store`` only.

Claims are keys with an expiry (``claim:task:<uuid>``, ``claim:leader``): the holder renews
them well before they lapse, so a holder that is killed loses them within one ``ttl``, and a
holder that cannot reach the store stops acting as holder (it never renews blind).

Also: per-user locks for the concurrency check (``owner_lock``), the counts of places taken in
the store (slots and user places) handed to the registry and the dispatcher on every scan, the
leader's upkeep of the shared queue, and the recovery of a store that lost its state
(``recover``: its marker changed, so this instance writes back what it holds in memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

from clusterodm.compat import cancel_requested
from clusterodm.config import ScaleOutSettings
from clusterodm.errors import StoreError
from clusterodm.nodes.registry import NodeRegistry
from clusterodm.store.base import Coordination, Store
from clusterodm.tasks.dispatch import PENDING, Dispatcher, node_pool
from clusterodm.tasks.routes import RouteTable
from clusterodm.tasks.table import TaskTable

log = logging.getLogger(__name__)

LEADER = "leader"
RESUBSCRIBE_S = 1.0
LOCK_WAIT_S = 10.0  # how long a per-user lock is waited for before the request fails
LOCK_RETRY_S = 0.05


DEFAULT_SCALE_OUT = ScaleOutSettings()


def new_instance_id() -> str:
    """Unique per process: host, pid and a random part (a pid may be reused after a restart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def stop_if_cancelled() -> None:
    """Re-raise a cancellation that a library turned into an error (redis-py may report a
    cancelled read as a connection error); a loop that caught it would otherwise run on."""
    if cancel_requested():
        raise asyncio.CancelledError


@contextlib.contextmanager
def survived(outage: str, failure: str) -> Iterator[None]:
    """One round of a background loop that must outlive the store going away (``outage`` is
    logged as a warning) and its own bugs (``failure``, with the traceback); a cancellation
    stays a cancellation."""
    try:
        yield
    except StoreError as e:
        stop_if_cancelled()
        log.warning("%s: %s", outage, e.message)
    except Exception:
        stop_if_cancelled()
        log.exception(failure)


def task_key(uuid: str) -> str:
    return "task:" + uuid


class TaskClaims:
    """``DispatchClaims`` on the shared store: one dispatching instance per task."""

    def __init__(self, coordination: Coordination, owner: str, settings: ScaleOutSettings) -> None:
        self.coordination = coordination
        self.owner = owner
        self.settings = settings

    async def take(self, uuid: str) -> bool:
        return await self.coordination.claim(
            task_key(uuid), self.owner, int(self.settings.claim_ttl_s * 1000)
        )

    async def held(self, uuids: list[str]) -> list[bool]:
        holders = await self.coordination.holders([task_key(u) for u in uuids])
        return [holder is not None for holder in holders]

    async def hold(self, uuid: str, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work``, renewing the claim; a claim lost to another instance stops the work."""
        job = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({job}, timeout=self.settings.renew_s)
                if job in done:
                    return job.result()
                try:
                    kept = await self.take(uuid)
                except StoreError as e:
                    stop_if_cancelled()
                    log.warning("task %s: claim not renewed: %s", uuid, e.message)
                    continue  # the work needs the store too; it fails or the store comes back
                if not kept:
                    log.warning("task %s: another instance took the task over", uuid)
                    return
        finally:
            if not job.done():
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
            with contextlib.suppress(StoreError):
                await self.coordination.release(task_key(uuid), self.owner)


class ScaleOut:
    """The background work of one instance among several; started by ``app.py``."""

    def __init__(
        self,
        coordination: Coordination,
        store: Store,
        registry: NodeRegistry,
        routes: RouteTable,
        table: TaskTable,
        dispatcher: Dispatcher,
        settings: ScaleOutSettings = DEFAULT_SCALE_OUT,
        instance_id: str | None = None,
    ) -> None:
        self.coordination = coordination
        self.store = store
        self.registry = registry
        self.routes = routes
        self.table = table
        self.dispatcher = dispatcher
        self.settings = settings
        self.instance_id = instance_id or new_instance_id()
        self.claims = TaskClaims(coordination, self.instance_id, settings)
        self.is_leader = False
        self.takeovers = 0
        self.marker: str | None = None  # the store's identity stamp when last seen
        self.recoveries = 0
        #: called on the leader while tasks wait or slots are being taken (refresh nodes soon)
        self.on_busy: Callable[[], Any] | None = None
        self._owner_locks: dict[str, asyncio.Lock] = {}
        self._recovering = asyncio.Lock()

    def leads(self) -> bool:
        return self.is_leader

    async def announce(self, event: str) -> None:
        """Tell the other instances; a lost notice is caught up by their next scan."""
        try:
            await self.coordination.publish(event)
        except StoreError as e:
            stop_if_cancelled()
            log.warning("could not announce %r: %s", event, e.message)

    # --- leader lease ------------------------------------------------------------------------
    async def hold_lease(self) -> bool:
        try:
            leads = await self.coordination.claim(
                LEADER, self.instance_id, int(self.settings.claim_ttl_s * 1000)
            )
        except StoreError as e:
            stop_if_cancelled()
            log.warning("leader lease not renewed: %s", e.message)
            leads = False
        if leads != self.is_leader:
            log.info("this instance %s the leader", "is now" if leads else "is no longer")
        self.is_leader = leads
        return leads

    async def run_lease(self) -> None:
        while True:
            await self.hold_lease()
            await asyncio.sleep(self.settings.claim_ttl_s / 3)

    async def close(self) -> None:
        """Give the lease up at once, so another instance need not wait for it to lapse."""
        if self.is_leader:
            self.is_leader = False
            with contextlib.suppress(StoreError):
                await self.coordination.release(LEADER, self.instance_id)

    # --- per-user lock (concurrency limits) ---------------------------------------------------
    @contextlib.asynccontextmanager
    async def owner_lock(self, owner: str) -> AsyncIterator[None]:
        """One check-and-record at a time for ``owner`` in the whole cluster: a claim in the
        store (and a local lock, since a claim is ours again for every task of this process)."""
        key = "lock:user:" + owner
        ttl_ms = int(self.settings.claim_ttl_s * 1000)
        async with self._owner_locks.setdefault(owner, asyncio.Lock()):
            deadline = time.monotonic() + LOCK_WAIT_S
            while not await self.coordination.claim(key, self.instance_id, ttl_ms):
                if time.monotonic() > deadline:
                    raise StoreError(f"the per-user lock of {owner!r} stayed taken")
                await asyncio.sleep(LOCK_RETRY_S)
            try:
                yield
            finally:
                with contextlib.suppress(StoreError):
                    await self.coordination.release(key, self.instance_id)

    async def reread_tasks(self) -> None:
        """The task table as the store has it now (before counting a user's tasks)."""
        self.table.sync(await self.store.list_tasks(), keep=self.dispatcher.active)

    # --- a store that lost its state -----------------------------------------------------------
    async def recover(self) -> bool:
        """If the store's marker changed (Redis came back empty), write back the nodes, routes
        and task-table entries this instance holds in memory. True if it did."""
        async with self._recovering:  # a second caller waits for the write-back to finish
            marker = await self.store.marker()
            if self.marker is None or marker == self.marker:
                self.marker = marker
                return False
            await self._write_back()
            self.marker = marker  # only now: until then every read of the store is suspect
            return True

    async def _write_back(self) -> None:
        """Pending task entries only from the instance dispatching them (its copy is the newest;
        another instance's may be older than the task's landing and would start it again)."""
        nodes, routes = self.registry.nodes(), self.routes.all()
        tasks = [
            t
            for t in self.table.entries()
            if t.stage not in PENDING or self.dispatcher.active(t.uuid)
        ]
        log.warning(
            "the shared store lost its state (restarted empty?); writing back what this "
            "instance knows: %d nodes, %d routes, %d task-table entries",
            len(nodes), len(routes), len(tasks),
        )  # fmt: skip
        for node in nodes:
            await self.store.put_node(node)
        await self.store.put_routes(routes)
        for task in tasks:
            await self.store.put_task(task)
        self.recoveries += 1
        await self.announce("nodes")

    async def reload_nodes(self) -> None:
        """Re-read the node list, unless the store lost its state meanwhile (then the memory
        copy is what was just written back)."""
        seen = self.registry.generation
        nodes = await self.store.list_nodes()
        if not await self.recover():
            await self.registry.reload(nodes, seen)

    # --- notices from other instances --------------------------------------------------------
    async def on_event(self, event: str, first: bool) -> None:
        kind, _, arg = event.partition(" ")
        if kind == "":  # (re)subscribed: catch up on what may have been missed
            await self.recover()
            await self.reload_nodes()
            if not first:
                routes = await self.store.list_routes()
                if not await self.recover():
                    self.routes.replace(routes)
        elif kind == "nodes":
            await self.reload_nodes()
        elif kind == "route-deleted":
            self.routes.forget(arg)
        elif kind == "route-added":
            await self.routes.fetch(arg)
        elif kind == "cancel":
            await self.dispatcher.cancel(arg)

    async def run_events(self) -> None:
        first = True
        while True:
            with survived(
                "notices from other instances interrupted",
                "handling a notice from another instance failed",
            ):
                async for event in self.coordination.events():
                    await self.on_event(event, first)
                    if event == "":
                        first = False
            await asyncio.sleep(RESUBSCRIBE_S)

    # --- scan --------------------------------------------------------------------------------
    async def scan_once(self) -> int:
        """Re-read nodes, task table, places and queue; start the pending tasks nobody holds.
        Answers how many."""
        await self.recover()
        seen = self.registry.generation
        nodes, tasks = await self.store.list_nodes(), await self.store.list_tasks()
        if await self.recover():
            return 0  # the store lost its state while it was read: that read is not the cluster
        await self.registry.reload(nodes, seen)
        self.table.sync(tasks, keep=self.dispatcher.active)
        await self.count_shared(tasks)
        pending = [t.uuid for t in tasks if t.stage in PENDING]
        pending = [u for u in pending if not self.dispatcher.active(u)]
        holders = await self.coordination.holders([task_key(u) for u in pending])
        free = [u for u, holder in zip(pending, holders, strict=True) if holder is None]
        for uuid in free:
            log.info("task %s: no instance holds it, taking it over", uuid)
            self.dispatcher.submit(uuid)
        self.takeovers += len(free)
        return len(free)

    async def count_shared(self, tasks: list[Any]) -> None:
        """Places and queue length for the registry and the dispatcher; on the leader, the
        queue's upkeep: drop entries of tasks no longer pending (removed while their instance
        was away), and refresh nodes soon while anything waits or is being sent."""
        counts = await self.store.reserved()
        prefix = node_pool("")
        self.registry.set_reserved(
            {k[len(prefix) :]: n for k, n in counts.items() if k.startswith(prefix)}
        )
        self.dispatcher.set_reserved(counts)
        queue = await self.store.queue_list()
        if self.is_leader:
            pending = {t.uuid for t in tasks if t.stage in PENDING}
            for w in queue:
                if w.uuid not in pending:
                    log.info("task %s: no longer pending, dropped from the queue", w.uuid)
                    await self.store.queue_leave(w.uuid, served=False)
            queue = [w for w in queue if w.uuid in pending]
            if (queue or counts) and self.on_busy is not None:
                self.on_busy()
        self.dispatcher.cluster_queue_length = len(queue)
        self.dispatcher.cluster_queue_images = sum(w.images for w in queue)

    async def run_scan(self) -> None:
        while True:
            await asyncio.sleep(self.settings.scan_s)
            with survived("scan of the shared state failed", "scan of the shared state failed"):
                await self.scan_once()
