"""NodeRegistry: the node list, its online state, slots and transients.

Owns the in-memory view of nodes (read on every request, so lookups never touch the store) and
writes every change through to the ``Store``. Online rule as the original: the last successful
``/info`` is younger than the online window; better than the original, a failed refresh marks
the node offline at once instead of two minutes later.

With a shared store (several instances) the list is re-read from the store (``reload``) on an
interval and whenever another instance announces a change (``nodes``); one instance, the
leader, refreshes ``/info`` and the others read its results with their ``last_refreshed_ms``.
Slots taken by every instance's dispatches are places in the store (``Store.reserve``); their
counts per node, read on an interval, count against the free slots here like transients.

A node's queue count is its last ``/info`` corrected by what the cluster did since (sent,
cancelled, removed, saw finish: ``SlotLedger``), so a slot freed through the cluster is free at
once, not at the next refresh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from clusterodm.errors import InvalidRequest
from clusterodm.log import event
from clusterodm.model import Node, NodeInfo, TaskStatus, node_key
from clusterodm.nodes.address import check_hostname, check_port
from clusterodm.nodes.ledger import SlotLedger
from clusterodm.nodes.selection import NodeState, available_slots, best_node
from clusterodm.store.base import Store

log = logging.getLogger(__name__)


RELOAD_TRIES = 5
"""Reads of the shared node list a reload makes while this instance keeps changing it."""
SHARED_READ_SLACK_MS = 10_000
"""A node's ``/info`` stored by another instance was asked at most this long before it was
stored (the info timeout): events older than that are in its count."""


class NodeRegistry:
    """Nodes in list order (1-based numbers for the admin), with runtime state."""

    def __init__(
        self,
        store: Store,
        online_window_s: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._window_ms = int(online_window_s * 1000)
        self._clock = clock
        self._nodes: list[Node] = []
        self._failed: set[str] = set()
        #: why each node went offline (the last failed probe or request), for the admin page
        self.offline_reasons: dict[str, str] = {}
        self._transients: dict[str, int] = {}
        self._reserved: dict[str, int] = {}  # shared store: slots every instance has taken
        self._last_chosen: dict[str, int] = {}
        self._ledger = SlotLedger()
        self._turn = 0
        self._generation = 0  # bumped by every change this instance makes to the list
        self.listeners: list[Callable[[], Any]] = []
        #: set with a shared store: tells the other instances the list changed (``nodes``)
        self.announce: Callable[[str], Awaitable[None]] | None = None

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    now_ms = _now_ms  # for callers that time a request to a node (``record_info``)

    async def load(self) -> None:
        self._nodes = await self._store.list_nodes()

    @property
    def generation(self) -> int:
        """Read before reading the store's list, handed to :meth:`reload` with it."""
        return self._generation

    async def reload(self, fresh: list[Node] | None = None, seen: int | None = None) -> None:
        """Take the store's list (shared store), or ``fresh``, a list just read from it when
        :attr:`generation` was ``seen``. A list read before a change this instance made since
        is stale (it would drop a node just added), so it is read again, a few times at most
        (then the list stays as it is until the next reload). A node this instance saw fail
        counts as offline until a newer refresh than the one it failed after is stored."""
        for _ in range(RELOAD_TRIES):
            if fresh is not None and seen == self._generation:
                break
            seen = self._generation
            fresh = await self._store.list_nodes()
        else:
            return
        before = {n.key: n for n in self._nodes}
        for node in fresh:
            old = before.get(node.key)
            if old is None or node.last_refreshed_ms > old.last_refreshed_ms:
                self._failed.discard(node.key)
                # read by another instance: asked at most one info timeout before it landed
                stored = node.last_refreshed_ms
                self._ledger.read(node.key, stored - SHARED_READ_SLACK_MS, stored)
        keys = {n.key for n in fresh}
        self._failed &= keys
        changed = fresh != self._nodes
        self._nodes = fresh
        if changed:
            self._notify()

    # --- reading -------------------------------------------------------------------------
    def nodes(self) -> list[Node]:
        return list(self._nodes)

    def get(self, key: str) -> Node | None:
        for n in self._nodes:
            if n.key == key:
                return n
        return None

    def by_number(self, number: int) -> Node | None:
        """1-based, in list order, as the admin CLI numbers nodes."""
        if 1 <= number <= len(self._nodes):
            return self._nodes[number - 1]
        return None

    def number_of(self, key: str) -> int:
        for i, n in enumerate(self._nodes, 1):
            if n.key == key:
                return i
        return 0

    def is_online(self, node: Node) -> bool:
        if node.key in self._failed or node.info is None:
            return False
        return self._now_ms() - node.last_refreshed_ms < self._window_ms

    def transients(self, key: str) -> int:
        """Tasks being forwarded to ``key``: by this instance, or (shared store) by any, as
        last counted; this instance's own are among those, hence the larger of the two."""
        return max(self._transients.get(key, 0), self._reserved.get(key, 0))

    def set_reserved(self, counts: dict[str, int]) -> None:
        """The slots taken on each node by every instance (shared store), as just counted."""
        before, self._reserved = self._reserved, dict(counts)
        if any(self._reserved.get(k, 0) < n for k, n in before.items()):
            self._notify()  # places were given back: waiting tasks may go

    def note_full(self, key: str) -> None:
        """Another instance took the node's last slot: count it full until the next count."""
        node = self.get(key)
        if node is not None and node.info is not None:
            self._reserved[key] = node.info.max_parallel_tasks

    def counted(self, node: Node) -> Node:
        """``node`` with its queue count as the cluster knows it now (``SlotLedger``)."""
        adjust = self._ledger.adjustment(node.key)
        if not adjust or node.info is None:
            return node
        count = max(0, node.info.task_queue_count + adjust)
        info = dataclasses.replace(node.info, task_queue_count=count)
        return dataclasses.replace(node, info=info)

    def queue_count(self, node: Node) -> int:
        """Tasks queued or running on the node, as the cluster knows it now."""
        info = self.counted(node).info
        return info.task_queue_count if info is not None else 0

    def slots(self, node: Node) -> int:
        return available_slots(self.counted(node), self.transients(node.key))

    def states(self) -> list[NodeState]:
        states = []
        for n in self._nodes:
            c = self.counted(n)
            slots = available_slots(c, self.transients(n.key))
            states.append(NodeState(c, self.is_online(n), slots, self._last_chosen.get(n.key, 0)))
        return states

    def reference(self) -> Node | None:
        """The first online node: answers /options and serves the web UI."""
        for n in self._nodes:
            if self.is_online(n):
                return n
        return None

    def online_nodes(self) -> list[Node]:
        return [n for n in self._nodes if self.is_online(n)]

    def best(
        self, images: int, *, require_slot: bool = False, exclude: set[str] | None = None
    ) -> Node | None:
        states = [s for s in self.states() if not exclude or s.node.key not in exclude]
        return best_node(states, images, require_slot=require_slot)

    def choose(self, key: str) -> None:
        """Remember the node was just chosen (the original's round-robin turn)."""
        self._turn += 1
        self._last_chosen[key] = self._turn

    def add_transient(self, key: str) -> None:
        """Count a task being forwarded to ``key`` against its slots until it lands."""
        self._transients[key] = self._transients.get(key, 0) + 1

    def drop_transient(self, key: str) -> None:
        left = self._transients.get(key, 1) - 1
        if left <= 0:
            self._transients.pop(key, None)
        else:
            self._transients[key] = left

    @contextlib.contextmanager
    def transient(self, key: str) -> Iterator[None]:
        self.add_transient(key)
        try:
            yield
        finally:
            self.drop_transient(key)

    # --- changing ------------------------------------------------------------------------
    async def add(
        self,
        hostname: str,
        port: int,
        token: str = "",
        machine: dict[str, Any] | None = None,
        discovered: str = "",
    ) -> Node:
        hostname = check_hostname(hostname)  # BadAddress: never a node whose URL cannot be built
        port = check_port(port)
        if self.get(node_key(hostname, port)) is not None:
            raise InvalidRequest(f"Node {node_key(hostname, port)} already exists")
        node = Node(
            hostname=hostname, port=port, token=token, machine=machine, discovered=discovered
        )
        await self._store.put_node(node)
        self._generation += 1  # after the write: a list read before it is stale
        self._nodes.append(node)
        self._notify()
        await self._announce()
        log.info("node added: %s", node.key)
        return node

    async def remove(self, key: str) -> Node | None:
        node = self.get(key)
        if node is None:
            return None
        await self._store.delete_node(key)
        self._generation += 1
        self._nodes = [n for n in self._nodes if n.key != key]
        self._failed.discard(key)
        self._ledger.forget(key)
        self._notify()
        await self._announce()
        log.info("node removed: %s", key)
        return node

    async def set_locked(self, key: str, locked: bool) -> Node | None:
        updated = await self._update(key, locked=locked)
        await self._announce()
        return updated

    async def set_machine(self, key: str, machine: dict[str, Any] | None) -> Node | None:
        updated = await self._update(key, machine=machine)
        await self._announce()
        return updated

    async def set_discovery(self, key: str, **changes: Any) -> Node | None:
        """Discovery's own fields of a node it found (``draining``, ``token``, ``discovered``)."""
        updated = await self._update(key, **changes)
        await self._announce()
        return updated

    async def record_info(
        self, key: str, info: NodeInfo, asked_ms: int | None = None
    ) -> Node | None:
        """The node's ``/info``, asked at ``asked_ms`` (events since stay counted on top)."""
        node = self.get(key)
        if node is not None and not self.is_online(node):
            event(log, logging.INFO, f"node {key} online", event="node_online", node=key)
        self._failed.discard(key)
        self.offline_reasons.pop(key, None)
        if asked_ms is not None:
            self._ledger.read(key, asked_ms)
        return await self._update(key, info=info, last_refreshed_ms=self._now_ms())

    def record_failure(self, key: str, why: str = "a request to it failed") -> None:
        if key not in self._failed:
            event(
                log,
                logging.WARNING,
                f"node {key} offline: {why}",
                event="node_offline",
                node=key,
                reason=why,
            )
        self.offline_reasons[key] = why
        self._failed.add(key)
        self._notify()

    def task_sent(self, key: str, uuid: str) -> None:
        """The cluster committed (or restarted) ``uuid`` on the node: one more in its queue."""
        self._ledger.sent(key, uuid, self._now_ms())

    def task_seen(self, key: str, uuid: str, code: int | None, asked_ms: int) -> None:
        """A status answer for ``uuid`` from the node, asked at ``asked_ms``: queued or running
        (10, 20) keeps it counted; finished, failed or cancelled (40, 30, 50) frees its slot."""
        if code in (TaskStatus.QUEUED, TaskStatus.RUNNING):
            self._ledger.seen_active(key, uuid, asked_ms)
        elif code in (TaskStatus.FAILED, TaskStatus.COMPLETED, TaskStatus.CANCELED):
            self.task_ended(key, uuid)

    def task_ended(self, key: str, uuid: str) -> None:
        """``uuid`` left the node's queue (cancelled or removed through the cluster, or seen
        ended): its slot is free now, and waiting tasks may go."""
        if self._ledger.ended(key, uuid, self._now_ms()):
            self._notify()

    def release(self, key: str) -> None:
        """Give back a slot held for forwarding (``add_transient``), and say so."""
        self.drop_transient(key)
        self._notify()

    async def _update(self, key: str, **changes: Any) -> Node | None:
        node = self.get(key)
        if node is None:
            return None
        if self.announce is not None:
            # shared: start from the stored node, so another instance's change (a lock) made
            # since our last reload is not written back over
            stored = {n.key: n for n in await self._store.list_nodes()}.get(key)
            if stored is None:
                return None
            node = stored
        updated = dataclasses.replace(node, **changes)
        await self._store.put_node(updated)
        self._generation += 1
        self._replace(updated)
        self._notify()
        return updated

    def _replace(self, updated: Node) -> None:
        self._nodes = [updated if n.key == updated.key else n for n in self._nodes]

    async def _announce(self) -> None:
        if self.announce is not None:
            await self.announce("nodes")

    def _notify(self) -> None:
        for listener in self.listeners:
            listener()
