"""Dispatcher: owns every dispatch job, forwarding a committed task to a node.

A job first gets a node: a free slot on a static node, or a new machine from the autoscaler
(``NodeProvisioner``), or else it waits in the proxy's queue (status QUEUED, its position in the
output) until the fair scheduler grants it one. Then it runs init (``set-uuid`` = the task's
uuid, so it never changes) -> parallel uploads with retries -> commit; on failure it backs off
and retries, switching to another node when one exists. The task-table entry is written before
each step, so after a crash ``resume`` starts every unfinished job again from the staged files.
Jobs are owned here: a client leaving never cancels one; ``close`` cancels and awaits them all.

With a shared store (several instances) a job first takes the task's claim (``DispatchClaims``):
the instance holding it is the only one forwarding the task, and renews it while the job runs;
a job that cannot take it ends at once (another instance is on it). The queue is then the
store's, one fair order for the cluster: every waiting job reads it, works out which waiting
tasks the free slots go to (the same rule as ``wake``), and when its own task is one of them
takes the slot as a place in the store (``Store.reserve``: checked and taken in one step, so two
instances never take a node's last slot) and leaves the queue. Users' concurrency limits are
places too. Writes to the task table are compare-and-set on the stage (``update_if``): a cancel
written by any instance while a step runs is never overwritten; the job stops instead.

Original: a task that finds no free slot is pushed onto a full node anyway, or fails; here it
waits at the proxy, survives restarts, and is sent as soon as a slot frees up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from clusterodm import log as logctx
from clusterodm.compat import ExceptionGroup, TaskGroup, cancel_requested
from clusterodm.config import DispatchSettings
from clusterodm.errors import (
    CloudError,
    LimitExceeded,
    NodeError,
    NodeRejected,
    NodeUnreachable,
    StoreError,
)
from clusterodm.metrics import Metrics
from clusterodm.model import Node, TaskEntry, TaskStage, TaskStatus, Waiting
from clusterodm.nodes.client import NodeClient
from clusterodm.nodes.registry import NodeRegistry
from clusterodm.nodes.selection import NodeState, best_node
from clusterodm.store.base import Store
from clusterodm.store.staging import Staging
from clusterodm.tasks import nodeside
from clusterodm.tasks.events import TaskEvents
from clusterodm.tasks.pipeline import PIPELINE_META, UploadPipelines
from clusterodm.tasks.queue import FairTags, fair_order, position
from clusterodm.tasks.routes import RouteTable
from clusterodm.tasks.table import TaskTable

log = logging.getLogger(__name__)

PENDING = (TaskStage.COMMITTED, TaskStage.DISPATCHING, TaskStage.QUEUED)
LAUNCHING = "Launching... please wait! This can take a few minutes."
QUEUED_LINE = "Queued at the cluster"
VIEW_MAX_AGE_S = 0.2  # waiting jobs of one instance share one read of the shared queue
RECOUNT_FRESH_S = 1.0  # nodes counted this recently (at a dispatch) are not asked again
RECOUNT_WAIT_S = 3.0  # a dispatch waits this long at most for the nodes' counts


class Superseded(Exception):
    """The task-table entry left the dispatch's stages meanwhile (cancelled or removed, maybe
    on another instance): the dispatch stops and writes nothing more."""


def node_pool(node_key: str) -> str:
    return "node:" + node_key


def user_pool(owner: str) -> str:
    return "user:" + owner


def plan_grants(
    order: list[Waiting],
    states: list[NodeState],
    may_start: Callable[[str, int], bool],
    mine: str,
    exclude: set[str],
) -> dict[str, Node | None]:
    """Who the free slots go to, in queue order, as ``wake`` grants them: a waiting task whose
    owner may start and for which a node has a free slot gets that node (None: no node fits
    now). Pure; ``may_start(owner, granted)`` says whether an owner with ``granted`` tasks
    granted in this round may start one more. Only ``mine`` avoids the nodes in ``exclude``."""
    free = {s.node.key: s.available_slots for s in states}
    granted: dict[str, int] = {}
    plan: dict[str, Node | None] = {}
    for w in order:
        if not may_start(w.owner, granted.get(w.owner, 0)):
            continue
        now = [dataclasses.replace(s, available_slots=free[s.node.key]) for s in states]
        node = None
        if w.uuid == mine and exclude:
            node = best_node(
                [s for s in now if s.node.key not in exclude], w.images, require_slot=True
            )
        node = node or best_node(now, w.images, require_slot=True)
        plan[w.uuid] = node
        if node is not None:
            free[node.key] -= 1
            granted[w.owner] = granted.get(w.owner, 0) + 1
    return plan


def node_fields(fields: Mapping[str, Any], options: list[dict[str, Any]]) -> dict[str, str]:
    """The init fields as a node receives them."""
    out = {k: str(v) for k, v in fields.items() if k != "options"}
    out["options"] = json.dumps(options)
    return out


class NodeProvisioner(Protocol):
    """The autoscaler, as the dispatcher sees it."""

    def reserve(self, images: int) -> object | None:
        """Claim room for one new machine able to take ``images``; None if not allowed now."""

    def release(self, claim: object) -> None:
        """Give back a claim that was not used."""

    async def confirm(self, claim: object, uuid: str) -> bool:
        """Shared store: count the claim where every instance counts; False if that is full."""

    async def provision(self, claim: object, uuid: str, images: int) -> Node:
        """Create the machine, wait for its node to come online, register it; CloudError."""

    async def discard(self, node_key: str) -> None:
        """Destroy an auto-spawned node that could not take its task."""


class DispatchClaims(Protocol):
    """Exactly-once dispatch between instances sharing a store (``tasks/scaleout.py``)."""

    async def take(self, uuid: str) -> bool:
        """Claim the task for this instance; False if another instance holds it."""

    async def hold(self, uuid: str, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` while renewing the claim; release it at the end."""

    async def held(self, uuids: list[str]) -> list[bool]:
        """Whether some instance holds each task's claim (its dispatch is alive)."""


@dataclass(frozen=True, slots=True)
class Claim:
    """A grant of a new machine instead of a slot on an existing node."""

    claim: object


Grant = Node | Claim


class Dispatcher:
    def __init__(
        self,
        registry: NodeRegistry,
        client: NodeClient,
        routes: RouteTable,
        table: TaskTable,
        staging: Staging,
        settings: DispatchSettings,
        on_node_failure: Callable[[str], Any] | None = None,
        on_waiting: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.events = TaskEvents()  # app.py shares the cluster's
        self.registry = registry
        self.client = client
        self.routes = routes
        self.table = table
        self.staging = staging
        self.settings = settings
        self.on_node_failure = on_node_failure
        self.on_waiting = on_waiting
        self.clock = clock
        self.provisioner: NodeProvisioner | None = None
        #: per-user limits on tasks dispatching or running (``max_concurrent_tasks``); a task
        #: over its owner's limit waits in the queue instead of being refused
        self.concurrency_limits: dict[str, int] = {}
        self._granted: dict[str, int] = {}  # grants not yet marked DISPATCHING, per owner
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._waiting: dict[str, tuple[Waiting, asyncio.Future[Grant]]] = {}
        self._seq = 0
        self._tags = FairTags()
        self._kept_bytes: dict[str, int] = {}
        self.metrics: Metrics | None = None
        self.pipelines: UploadPipelines | None = None
        self.store: Store | None = None  # for the records of early-forwarded uploads
        self.claims: DispatchClaims | None = None  # set with a shared store
        #: set with a shared store: its queue, slot places and user places are the cluster's
        self.shared: Store | None = None
        self.place_hold_s = 10.0  # a place of a dead instance lapses after this (claim ttl)
        self.cluster_queue_length = 0  # tasks waiting in the whole cluster, as last read
        self.cluster_queue_images = 0  # and their images
        self._nudge = asyncio.Event()
        self._view: tuple[float, list[Waiting], set[str]] | None = None
        self._view_lock = asyncio.Lock()
        self._user_places: dict[str, int] = {}
        self._places: dict[str, tuple[list[str], asyncio.Task[None]]] = {}
        #: asks every node's ``/info`` now (``HealthMonitor.refresh_all``); one instance only
        self.recount: Callable[[], Coroutine[Any, Any, None]] | None = None
        self._recount_job: asyncio.Task[None] | None = None
        self._recounted = -RECOUNT_FRESH_S  # monotonic time the last recount ended
        #: nodes that may hold part of a task they will not run (out of reach when it moved on),
        #: cleared once they answer again (``clear_leftovers``); memory only
        self._leftovers: dict[str, set[str]] = {}

    # --- jobs ----------------------------------------------------------------------------
    def submit(self, uuid: str) -> None:
        """Start forwarding ``uuid`` (idempotent while a job runs)."""
        job = self._jobs.get(uuid)
        if job is not None and not job.done():
            return
        task = asyncio.create_task(self._run(uuid), name=f"dispatch {uuid}")
        self._jobs[uuid] = task
        task.add_done_callback(lambda t: self._forget(uuid, t))

    async def settle(self, uuid: str, wait_s: float) -> None:
        """Until the job of ``uuid`` ends, for at most ``wait_s``; the job goes on regardless."""
        job = self._jobs.get(uuid)
        if job is not None and not job.done():
            await asyncio.wait([job], timeout=wait_s)

    def _forget(self, uuid: str, job: asyncio.Task[None]) -> None:
        if self._jobs.get(uuid) is job:
            del self._jobs[uuid]

    def active(self, uuid: str) -> bool:
        job = self._jobs.get(uuid)
        return job is not None and not job.done()

    async def resume(self) -> int:
        """After a restart: start again every task that was committed but not yet on a node."""
        count = 0
        for task in self.table.entries():  # oldest first, so the queue keeps its order
            if task.stage in PENDING:
                self.submit(task.uuid)
                count += 1
            elif task.stage is TaskStage.LANDED:
                self._kept_bytes[task.uuid] = await asyncio.to_thread(
                    _size_of, self.staging.files(task.uuid)
                )
        return count

    async def cancel(self, uuid: str) -> bool:
        """Stop a running job; True if there was one."""
        if self.pipelines is not None:
            await self.pipelines.close(uuid)
        job = self._jobs.pop(uuid, None)
        if job is None or job.done():
            return False
        job.cancel()
        try:
            await job
        except asyncio.CancelledError:
            pass
        return True

    async def close(self) -> None:
        jobs = list(self._jobs.values())
        pending = {j for j in jobs if not j.done()}
        while pending:  # cancelled again if a library lost the cancel (see app.cancel_all)
            for job in pending:
                job.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        await asyncio.gather(*jobs, return_exceptions=True)
        self._jobs.clear()
        if self._recount_job is not None:
            self._recount_job.cancel()
            await asyncio.gather(self._recount_job, return_exceptions=True)
        renewers = [renewer for _, renewer in self._places.values()]
        for renewer in renewers:
            renewer.cancel()
        await asyncio.gather(*renewers, return_exceptions=True)
        self._places.clear()

    # --- the queue -----------------------------------------------------------------------
    def queue_length(self) -> int:
        if self.shared is not None:
            return max(len(self._waiting), self.cluster_queue_length)
        return len(self._waiting)

    def queue_images(self) -> int:
        """Images of the tasks waiting (the whole cluster's, as last read, when shared)."""
        mine = sum(w.images for w, _ in self._waiting.values())
        if self.shared is not None:
            return max(mine, self.cluster_queue_images)
        return mine

    def queue_order(self) -> list[Waiting]:
        return fair_order(w for w, _ in self._waiting.values())

    def check_room(self, limit: int | None) -> None:
        """Refuse a new task when the queue is at ``--max-queue``."""
        if limit is not None and self.queue_length() >= limit:
            raise LimitExceeded(
                f"The cluster's queue is full ({limit} tasks waiting). Try again later."
            )

    def wake(self) -> None:
        """Something changed (a slot freed, a node came online): grant what can be granted."""
        self._nudge.set()  # shared store: the waiting jobs look again
        for w in self.queue_order():
            _, fut = self._waiting[w.uuid]
            if fut.done() or not self.may_start(w.owner):
                continue
            node = self._free_node(w.images, set())
            grant: Grant | None = None
            if node is not None:
                self.registry.add_transient(node.key)
                grant = node
            elif self.provisioner is not None:
                claim = self.provisioner.reserve(w.images)
                grant = Claim(claim) if claim is not None else None
            if grant is not None:
                fut.set_result(grant)
                self._tags.served(w.tag)
                self._granted[w.owner] = self._granted.get(w.owner, 0) + 1

    def running_for(self, owner: str) -> int:
        """The owner's tasks being forwarded or running on a node (as far as the proxy holds
        them: tasks whose images are kept, see ``--keep-images-gb``)."""
        if self.shared is not None:
            # tasks being forwarded hold a place in the store; landed ones are in the table
            landed = sum(
                1 for t in self.table.entries() if t.owner == owner and t.stage is TaskStage.LANDED
            )
            return landed + max(self._user_places.get(owner, 0), self._granted.get(owner, 0))
        busy = (TaskStage.DISPATCHING, TaskStage.LANDED)
        held = sum(1 for t in self.table.entries() if t.owner == owner and t.stage in busy)
        return held + self._granted.get(owner, 0)

    def set_reserved(self, counts: dict[str, int]) -> None:
        """Places held in the store by every instance, per pool, as just counted."""
        prefix = user_pool("")
        self._user_places = {p[len(prefix) :]: n for p, n in counts.items() if p.startswith(prefix)}

    def may_start(self, owner: str) -> bool:
        limit = self.concurrency_limits.get(owner)
        return limit is None or self.running_for(owner) < limit

    def _free_node(self, images: int, exclude: set[str]) -> Node | None:
        return self.registry.best(images, require_slot=True, exclude=exclude) or self.registry.best(
            images, require_slot=True
        )

    async def _acquire(self, task: TaskEntry, exclude: set[str]) -> Grant:
        """A node with a free slot (reserved for us), a machine claim, or wait in the queue."""
        if self.shared is not None:
            return await self._acquire_shared(self.shared, task, exclude)
        mine = self.may_start(task.owner)
        if not self._waiting and mine:
            node = self._free_node(task.images_count, exclude)
            if node is None and await self._recount():
                # full by the cluster's count: as the original, ask the nodes before queueing
                # (or starting a machine); the task stays RUNNING meanwhile
                node = None if self._waiting else self._free_node(task.images_count, exclude)
            grant: Grant | None = None
            if node is not None:
                self.registry.add_transient(node.key)
                grant = node
            elif self.provisioner is not None:
                claim = self.provisioner.reserve(task.images_count)
                grant = Claim(claim) if claim is not None else None
            if grant is not None:
                self._granted[task.owner] = self._granted.get(task.owner, 0) + 1
                return grant
        fut: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        queued_at = time.monotonic()
        self._seq += 1
        self._waiting[task.uuid] = (
            Waiting(
                task.uuid, task.owner, task.images_count, self._seq, self._tags.tag(task.owner)
            ),
            fut,
        )
        try:
            self.wake()
            shown = (-1, -1)
            while not fut.done():
                place = (position(self.queue_order(), task.uuid), len(self._waiting))
                if place != shown:
                    shown = place
                    await self._show_queued(task.uuid, *place)
                if self.on_waiting is not None:
                    self.on_waiting()
                try:
                    await asyncio.wait_for(asyncio.shield(fut), self.settings.queue_poll_s)
                except (TimeoutError, asyncio.TimeoutError):
                    self.wake()
            if self.metrics is not None:
                self.metrics.queue_wait_seconds.observe(time.monotonic() - queued_at)
            return fut.result()
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._give_back(fut.result())
                self._consume_grant(task.owner)
            raise
        finally:
            self._waiting.pop(task.uuid, None)

    async def _recount(self) -> bool:
        """Ask every node for its count now, unless that was done within ``RECOUNT_FRESH_S``;
        one round for all the dispatches that find the cluster full at once, waited for at
        most ``RECOUNT_WAIT_S``. True if a round was waited for."""
        if self.recount is None or self.shared is not None:
            return False
        job = self._recount_job
        if job is None or (job.done() and time.monotonic() - self._recounted > RECOUNT_FRESH_S):
            job = self._recount_job = asyncio.create_task(self._recount_round(self.recount))
        elif job.done():
            return False  # counted just now: the count stands
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(job), RECOUNT_WAIT_S)
        return True

    async def _recount_round(self, recount: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await recount()
        except Exception:
            log.exception("node count at dispatch failed")
        finally:
            self._recounted = time.monotonic()

    # --- the cluster's queue (shared store) ----------------------------------------------------
    async def _read_view(self, store: Store) -> tuple[list[Waiting], set[str]]:
        """The shared queue in fair order and the uuids whose dispatch is alive, read at most
        every ``VIEW_MAX_AGE_S`` for all the waiting jobs of this instance."""
        async with self._view_lock:
            now = time.monotonic()
            if self._view is None or now - self._view[0] > VIEW_MAX_AGE_S:
                order = fair_order(await store.queue_list())
                counts = await store.reserved()
                uuids = [w.uuid for w in order]
                alive = await self.claims.held(uuids) if self.claims is not None else []
                live = {u for u, ok in zip(uuids, alive, strict=True) if ok}
                self.registry.set_reserved(
                    {k[len(node_pool("")) :]: n for k, n in counts.items() if k.startswith("node:")}
                )
                self.set_reserved(counts)
                self.cluster_queue_length = len(order)
                self.cluster_queue_images = sum(w.images for w in order)
                self._view = (now, order, live)
            return self._view[1], self._view[2]

    def _may_start_with(self, owner: str, granted: int) -> bool:
        limit = self.concurrency_limits.get(owner)
        return limit is None or self.running_for(owner) + granted < limit

    async def _acquire_shared(self, store: Store, task: TaskEntry, exclude: set[str]) -> Grant:
        """Wait in the cluster's queue until a free slot goes to this task, then take it."""
        await store.queue_join(task.uuid, task.owner, task.images_count)
        self._view = None
        queued_at = time.monotonic()
        shown = (-1, -1)
        grant: Grant | None = None
        try:
            while True:
                order, live = await self._read_view(store)
                if all(w.uuid != task.uuid for w in order):  # the store lost it: join again
                    await store.queue_join(task.uuid, task.owner, task.images_count)
                    self._view = None
                    continue
                waiting = [w for w in order if w.uuid in live or w.uuid == task.uuid]
                plan = plan_grants(
                    waiting, self.registry.states(), self._may_start_with, task.uuid, exclude
                )
                if task.uuid in plan:
                    grant = await self._take(store, task, plan[task.uuid])
                if grant is not None:
                    await store.queue_leave(task.uuid, served=True)
                    self._view = None
                    if self.metrics is not None:
                        self.metrics.queue_wait_seconds.observe(time.monotonic() - queued_at)
                    return grant
                place = (position(order, task.uuid), len(order))
                if place != shown:
                    shown = place
                    await self._show_queued(task.uuid, *place)
                if self.on_waiting is not None:
                    self.on_waiting()
                self._nudge.clear()
                with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                    await asyncio.wait_for(self._nudge.wait(), self.settings.queue_poll_s)
        except BaseException:
            if grant is not None:  # taken, then cancelled before it was handed over
                self._give_back(grant)
                await self._release_places(task.uuid, landed=False)
            with contextlib.suppress(StoreError):
                await asyncio.shield(store.queue_leave(task.uuid, served=False))
            raise

    async def _take(self, store: Store, task: TaskEntry, node: Node | None) -> Grant | None:
        """Make a planned grant real: the node's slot, and the owner's place under their
        concurrency limit, each taken in the store in one atomic step; or a machine."""
        hold_ms = int(self.place_hold_s * 1000)
        if node is None:
            if self.provisioner is None:
                return None
            claim = self.provisioner.reserve(task.images_count)
            if claim is None or not await self.provisioner.confirm(claim, task.uuid):
                return None
            return Claim(claim)
        info = node.info
        capacity = 0 if info is None else info.max_parallel_tasks - info.task_queue_count
        if not await store.reserve(node_pool(node.key), task.uuid, capacity, hold_ms):
            self.registry.note_full(node.key)  # another instance took it first
            self._view = None
            return None
        pools = [node_pool(node.key)]
        limit = self.concurrency_limits.get(task.owner)
        if limit is not None:
            landed = sum(
                1
                for t in self.table.entries()
                if t.owner == task.owner and t.stage is TaskStage.LANDED and t.uuid != task.uuid
            )
            if not await store.reserve(user_pool(task.owner), task.uuid, limit - landed, hold_ms):
                await store.unreserve(node_pool(node.key), task.uuid)
                self._view = None
                return None
            pools.append(user_pool(task.owner))
        await self._hold_places(store, task.uuid, pools)
        self.registry.add_transient(node.key)
        return node

    async def _hold_places(self, store: Store, uuid: str, pools: list[str]) -> None:
        """Renew the task's places while it is forwarded (they lapse if this instance dies)."""
        old = self._places.pop(uuid, None)
        if old is not None:  # places of an earlier attempt
            old[1].cancel()
            await asyncio.gather(old[1], return_exceptions=True)
            for pool in old[0]:
                if pool not in pools:
                    with contextlib.suppress(StoreError):
                        await store.unreserve(pool, uuid)

        async def renew() -> None:
            hold_ms = int(self.place_hold_s * 1000)
            while True:
                await asyncio.sleep(self.place_hold_s / 3)
                for pool in pools:
                    try:  # ours: extended (it can only have lapsed over a longer pause)
                        await store.reserve(pool, uuid, 1 << 30, hold_ms)
                    except StoreError as e:
                        log.warning("task %s: place not renewed: %s", uuid, e.message)

        self._places[uuid] = (pools, asyncio.create_task(renew(), name=f"places {uuid}"))

    async def _release_places(self, uuid: str, landed: bool) -> None:
        """Give the places back; a landed task's slot stays counted for ``place_hold_s``, until
        the node's own queue count (refreshed by the leader) includes it."""
        held = self._places.pop(uuid, None)
        if held is None or self.shared is None:
            return
        pools, renewer = held
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)  # our own cancel still raises
        linger_ms = int(self.place_hold_s * 1000) if landed else 0
        for pool in pools:
            try:
                await self.shared.unreserve(pool, uuid, linger_ms)
            except StoreError as e:
                log.warning("task %s: place not given back (it lapses): %s", uuid, e.message)
        self._view = None

    def _consume_grant(self, owner: str) -> None:
        left = self._granted.get(owner, 0) - 1
        if left > 0:
            self._granted[owner] = left
        else:
            self._granted.pop(owner, None)

    def _give_back(self, grant: Grant) -> None:
        if isinstance(grant, Claim):
            if self.provisioner is not None:
                self.provisioner.release(grant.claim)
        else:
            self.registry.drop_transient(grant.key)

    async def _show_queued(self, uuid: str, place: int, total: int) -> None:
        task = self.table.get(uuid)
        if task is None:
            return
        why = "a free node" if self.may_start(task.owner) else "one of your tasks to finish"
        line = f"{QUEUED_LINE}: position {place} of {total}, waiting for {why}."
        output = tuple(x for x in task.output if not x.startswith(QUEUED_LINE))
        await self._write(
            uuid, stage=TaskStage.QUEUED, status=TaskStatus.QUEUED, output=(*output, line)
        )
        self.events.queued(uuid, place, total)

    async def _write(self, uuid: str, **changes: Any) -> TaskEntry:
        """Update the task's entry only while it is still being dispatched (compare-and-set on
        its stage): a cancel or removal written meanwhile, here or on another instance, wins."""
        task = await self.table.update_if(uuid, PENDING, **changes)
        if task is None:
            raise Superseded(uuid)
        return task

    async def _say(self, uuid: str, line: str, **changes: Any) -> TaskEntry:
        task = self.table.get(uuid)
        output = (*task.output, line) if task is not None else (line,)
        return await self._write(uuid, output=output, **changes)

    # --- dispatch --------------------------------------------------------------------------
    def _backoff(self, attempt: int) -> float:
        base = self.settings.backoff_base_s * (2 ** (attempt - 1))
        return min(self.settings.backoff_max_s, base) * (0.5 + random.random() / 2)

    async def _run(self, uuid: str) -> None:
        logctx.task_uuid.set(uuid)  # this job runs in its own context: every line names the task
        try:
            if self.claims is None:
                await self._dispatch(uuid)
            elif await self.claims.take(uuid):
                await self.table.refresh(uuid)  # the instance that held it before may have moved it
                await self.claims.hold(uuid, self._dispatch(uuid))
        except asyncio.CancelledError:
            raise
        except Superseded:
            log.info("task %s: cancelled or removed meanwhile; dispatch stopped", uuid)
        except Exception as e:
            if cancel_requested():
                raise asyncio.CancelledError from e  # a library reported our cancel as an error
            if self.claims is not None and isinstance(e, StoreError):
                # shared store out of reach: the claim lapses and the takeover scan restarts it
                log.warning("task %s: dispatch stopped, state store failed: %s", uuid, e.message)
                return
            log.exception("task %s: dispatch crashed", uuid)
            with contextlib.suppress(Superseded):
                await self._say(
                    uuid, f"Dispatch failed: {e}", stage=TaskStage.FAILED, status=TaskStatus.FAILED
                )

    async def _dispatch(self, uuid: str) -> None:
        task = self.table.get(uuid)
        if task is None or task.stage not in PENDING:
            return
        tried: set[str] = set()
        if self.pipelines is not None and uuid in self.pipelines:
            landed = await self._finish_pipeline(task)
            if landed:
                return
            task = self.table.get(uuid) or task
        if task.node_key:
            # Interrupted mid-forward (maybe by a crash), an early-forwarded upload whose
            # pipeline is gone, or moved off a dead node: the node may hold part of the upload
            # under this uuid. Landed there already (and complete) counts; otherwise whatever
            # it holds is cleared and another node is preferred (``nodeside``).
            if task.stage is TaskStage.DISPATCHING and await self._already_on(task.node_key, uuid):
                await self._landed(task, task.node_key)
                return
            tried.add(task.node_key)
            await self._clear_quietly(task.node_key, uuid)
        last_error = "no node available"
        for attempt in range(1, self.settings.attempts + 1):
            grant = await self._acquire(task, tried)
            task = self.table.get(uuid) or task
            node: Node | None = None
            counted = False  # the grant counts against the owner's limit until DISPATCHING does
            try:
                if isinstance(grant, Claim):
                    node = await self._provision(task, grant)
                else:
                    node = grant
                self.registry.choose(node.key)
                logctx.node_key.set(node.key)
                task = await self._write(
                    uuid,
                    stage=TaskStage.DISPATCHING,
                    status=TaskStatus.RUNNING,
                    node_key=node.key,
                    attempts=task.attempts + 1,
                    output=tuple(x for x in task.output if not x.startswith(QUEUED_LINE)),
                )
                self._consume_grant(task.owner)
                counted = True
                self.events.dispatched(uuid, node.key, task.attempts)
                started = time.monotonic()
                await self._send(node, task)
                if self.metrics is not None:
                    self.metrics.dispatch_seconds.observe(time.monotonic() - started)
                    self.metrics.dispatches.inc()
            except (NodeError, CloudError) as e:
                last_error = e.message
                if self.metrics is not None:
                    reason = "cloud" if isinstance(e, CloudError) else type(e).__name__
                    self.metrics.dispatch_failures.labels(reason).inc()
                log.warning("task %s: forwarding failed: %s", uuid, e.message)
                if node is not None:
                    tried.add(node.key)
                    if isinstance(e, NodeUnreachable):  # may hold part of it: cleared later
                        self._leftovers.setdefault(uuid, set()).add(node.key)
                    else:
                        await self._clear_quietly(node.key, uuid)
                    if isinstance(e, NodeUnreachable) and self.on_node_failure:
                        self.on_node_failure(node.key)
                    if node.auto_spawned and self.provisioner is not None:
                        await self.provisioner.discard(node.key)
            else:
                await self._landed(task, node.key)
                return
            finally:
                if not counted:
                    self._consume_grant(task.owner)
                if isinstance(grant, Node):
                    self.registry.drop_transient(grant.key)
                await self._release_places(uuid, landed=False)
            if attempt < self.settings.attempts:
                await asyncio.sleep(self._backoff(attempt))
                task = self.table.get(uuid) or task
        if self.metrics is not None:
            self.metrics.dispatch_failures.labels("gave_up").inc()
        await self._write(
            uuid,
            stage=TaskStage.FAILED,
            status=TaskStatus.FAILED,
            error_message=last_error,
            output=(*task.output, f"Could not start the task: {last_error}"),
        )
        log.error("task %s: gave up dispatching: %s", uuid, last_error)
        self.events.ended(uuid, "failed", last_error)

    async def _finish_pipeline(self, task: TaskEntry) -> bool:
        """The images went on to a node while they arrived: send the rest and commit there."""
        assert self.pipelines is not None
        node_key = task.node_key or ""
        await self._write(task.uuid, stage=TaskStage.DISPATCHING, attempts=task.attempts + 1)
        self.events.dispatched(task.uuid, node_key, task.attempts + 1)
        started = time.monotonic()
        try:
            node = await self.pipelines.finish(
                task.uuid, self.staging.files(task.uuid), node_fields(task.fields, task.options)
            )
        except NodeError as e:
            log.warning(
                "task %s: early forwarding to %s failed: %s", task.uuid, node_key, e.message
            )
            if self.metrics is not None:
                self.metrics.dispatch_failures.labels(type(e).__name__).inc()
            return False
        if self.metrics is not None:
            self.metrics.dispatch_seconds.observe(time.monotonic() - started)
            self.metrics.dispatches.inc()
        self.registry.choose(node.key)
        try:
            await self._landed(task, node.key)
        finally:
            self.registry.drop_transient(node.key)
        return True

    async def _provision(self, task: TaskEntry, grant: Claim) -> Node:
        assert self.provisioner is not None
        await self._say(
            task.uuid, "Starting a new processing node for this task.", stage=TaskStage.DISPATCHING
        )
        return await self.provisioner.provision(grant.claim, task.uuid, task.images_count)

    async def _already_on(self, node_key: str, uuid: str) -> bool:
        """The node runs the task, committed with every staged image (a commit that landed
        before a crash). A task there with another count is removed (``nodeside.verify``)."""
        node = self.registry.get(node_key)
        if node is None:
            return False
        try:
            info = await self.client.task_info(node, uuid)
        except NodeError:
            return False
        if info.get("uuid") != uuid:
            return False
        try:
            await nodeside.verify(self.client, node, uuid, self.staging.files(uuid))
        except NodeError:
            return False
        return True

    async def _clear_quietly(self, node_key: str, uuid: str) -> None:
        """Best effort: the node keeps nothing of this task (it will not run it). A node out
        of reach is cleared once it answers again (``clear_leftovers``)."""
        node = self.registry.get(node_key)
        if node is None:
            return
        try:
            await nodeside.clear(self.client, node, uuid)
        except NodeUnreachable as e:
            log.warning("task %s: could not clear %s yet: %s", uuid, node_key, e.message)
            self._leftovers.setdefault(uuid, set()).add(node_key)
        except NodeError as e:
            log.warning("task %s: could not clear %s: %s", uuid, node_key, e.message)

    async def clear_leftovers(self) -> None:
        """Clear what nodes that were out of reach may still hold of tasks they do not run,
        once they are online again; never the node a task runs on, nor while it is being sent
        (its own attempt clears the node it goes to)."""
        for uuid, keys in list(self._leftovers.items()):
            task = self.table.get(uuid)
            if task is not None and task.stage in PENDING:
                continue
            route = self.routes.get(uuid)
            for key in list(keys):
                node = self.registry.get(key)
                if node is None or (route is not None and route.node_key == key):
                    keys.discard(key)
                    continue
                if not self.registry.is_online(node):
                    continue
                try:
                    await nodeside.clear(self.client, node, uuid)
                except NodeUnreachable:
                    continue
                except NodeError as e:  # it answers, but not as NodeODM: nothing more to do
                    log.warning("task %s: could not clear %s: %s", uuid, key, e.message)
                keys.discard(key)
            if not keys:
                self._leftovers.pop(uuid, None)

    async def _send(self, node: Node, task: TaskEntry) -> None:
        """One attempt on ``node``, afresh: clear what it holds of the task, init, send every
        staged image, commit, and check the count (``nodeside``)."""
        files = self.staging.files(task.uuid)
        if not files:
            raise NodeRejected("staged images are missing", node.key, no_retry=True)
        await nodeside.clear(self.client, node, task.uuid)
        await self.client.init_task(node, task.uuid, node_fields(task.fields, task.options))
        sem = asyncio.Semaphore(self.settings.parallel_uploads)

        async def send_one(path: Path) -> None:
            async with sem:
                for attempt in range(1, self.settings.upload_retries + 1):
                    try:
                        await self.client.upload(node, task.uuid, path)
                        return
                    except NodeRejected as e:
                        if e.no_retry or attempt == self.settings.upload_retries:
                            raise
                    except NodeUnreachable:
                        if attempt == self.settings.upload_retries:
                            raise
                    await asyncio.sleep(min(self._backoff(attempt), 5.0))

        try:
            async with TaskGroup() as tg:
                for path in files:
                    tg.create_task(send_one(path))
        except ExceptionGroup as eg:
            first = eg.exceptions[0]
            if isinstance(first, NodeError):
                raise first from eg
            raise NodeRejected(str(first), node.key) from eg
        await self.client.commit(node, task.uuid)
        await nodeside.verify(self.client, node, task.uuid, files)

    async def _landed(self, task: TaskEntry, node_key: str) -> None:
        """The node has the task: store the route first, then keep or drop the images.

        The entry turns LANDED by compare-and-set: a cancel or removal written while the task
        was being sent wins, and the task is taken off the node again.
        """
        await self.routes.add(task.uuid, node_key, task.owner)
        if self.store is not None:
            await self.store.delete_meta(PIPELINE_META + task.uuid)
        self.registry.task_sent(node_key, task.uuid)
        await self._release_places(task.uuid, landed=True)
        keep = await self._keep(task.uuid)
        landed = await self.table.update_if(
            task.uuid, PENDING, stage=TaskStage.LANDED, status=TaskStatus.RUNNING, node_key=node_key
        )
        if landed is None:
            current = self.table.get(task.uuid)  # as stored now
            if current is None or current.stage in (TaskStage.FAILED, TaskStage.FINISHED):
                await self._undo(task.uuid, node_key)  # cancelled or removed meanwhile
            raise Superseded(task.uuid)  # else recorded as landed already: nothing to undo
        if not keep:
            self._kept_bytes.pop(task.uuid, None)
            await self.table.delete(task.uuid)
            await self.staging.remove(task.uuid)
        self.events.landed(task.uuid, node_key)
        self.wake()

    async def _undo(self, uuid: str, node_key: str) -> None:
        """Cancelled while it was being sent: take it off the node, forget its route."""
        log.info(
            "task %s: cancelled while being sent to %s; taking it off the node", uuid, node_key
        )
        node = self.registry.get(node_key)
        if node is not None:
            for action in ("cancel", "remove"):
                try:
                    await self.client.action(node, action, uuid, {})
                except NodeError as e:
                    log.warning("task %s: %s on %s failed: %s", uuid, action, node_key, e.message)
        await self.routes.delete(uuid)
        self._kept_bytes.pop(uuid, None)

    async def _keep(self, uuid: str) -> bool:
        """Keep the images for failover while the disk budget allows."""
        budget = self.settings.keep_images_bytes
        if budget <= 0:
            return False
        size = await asyncio.to_thread(_size_of, self.staging.files(uuid))
        if sum(self._kept_bytes.values()) + size > budget:
            log.info("task %s: images not kept for failover (disk budget reached)", uuid)
            return False
        self._kept_bytes[uuid] = size
        return True

    async def release_images(self, uuid: str) -> None:
        """The task no longer needs its images (done on its node, or given up)."""
        self._kept_bytes.pop(uuid, None)
        await self.table.delete(uuid)
        await self.staging.remove(uuid)


def _size_of(files: list[Path]) -> int:
    total = 0
    for f in files:
        try:
            total += os.stat(f).st_size
        except OSError:
            pass
    return total
