"""Discovery: nodes that come and go with DNS (``--nodes-from``), as compose and Kubernetes
scale them.

Every ``--discovery-interval`` seconds (and at once on ``NODE UPDATE``) each source is looked up
on its own, concurrently; the answers are then laid over the node list:

- an address a source lists and the list lacks is added, marked with the source's label
  (``Node.discovered``), and probed at once (the health monitor is woken);
- a discovered node no source lists any more is *drained*: selection skips it, its routes stay
  while its tasks run, and it leaves once none of them is unfinished (or, if it went offline,
  once the failover grace has passed, so failover had its chance to move them). A node listed
  again while draining takes tasks again.

A failed lookup (timeout, SERVFAIL) keeps that source's last good answer and is logged; so is an
empty one (no such name, no records): DNS says "nobody" for a moment while containers restart,
and a source never drops to no nodes by itself. Sources never share a failure: each lookup has
its own bound and its own ``try``, and this loop is not the health monitor's.

Nodes added by hand are never touched; an address that is already a hand-added node is left to
it. With several instances on one Redis only the leader looks up (``leads``) and writes the
result to the shared list, which every instance reads; ``NODE UPDATE`` looks up on any instance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from clusterodm.compat import timeout
from clusterodm.config import DiscoverySource
from clusterodm.errors import InvalidRequest, NodeError, NodeRejected
from clusterodm.model import Node, Route, TaskStage, node_key
from clusterodm.nodes.address import BadAddress
from clusterodm.nodes.client import NodeClient
from clusterodm.nodes.registry import NodeRegistry
from clusterodm.nodes.resolver import DnsResolver, Found, LookupFailed
from clusterodm.tasks.concurrency import ACTIVE, status_code
from clusterodm.tasks.routes import RouteTable
from clusterodm.tasks.table import TaskTable

log = logging.getLogger(__name__)

DRAIN_LINGER_S = 60.0
"""A draining node stays while one of its finished tasks was read this recently (a download)."""
TASK_CHECK_TIMEOUT_S = 5.0
"""A draining node slower than this to describe a task keeps it (asked again next round)."""
TASK_CHECK_CONCURRENCY = 8


class NodeIsDiscovered(InvalidRequest):
    """NODE DEL of a node DNS lists: it would come back at the next lookup."""


class Discovery:
    """Keeps the discovered part of the node list equal to what the sources list."""

    def __init__(
        self,
        sources: Sequence[DiscoverySource],
        resolver: DnsResolver,
        registry: NodeRegistry,
        client: NodeClient,
        routes: RouteTable,
        table: TaskTable,
        list_routes: Callable[[], Awaitable[list[Route]]],
        interval_s: float,
        offline_grace_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sources = list(sources)
        self.resolver = resolver
        self.registry = registry
        self.client = client
        self.routes = routes
        self.table = table
        self.list_routes = list_routes  # the store's routes: every instance's
        self.interval_s = interval_s
        self.offline_grace_s = offline_grace_s
        self.clock = clock
        self.answers: dict[str, list[Found]] = {}  # source label -> its last good answer
        self.failures: dict[str, str] = {}  # source label -> why its last lookup failed
        self.linger_s = DRAIN_LINGER_S
        self._offline_since: dict[str, float] = {}
        self._refused: set[str] = set()  # addresses that cannot be nodes, logged once
        self._round_routes: list[Route] | None = None  # read once per round, when needed
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        #: False while another instance looks up for the whole cluster (shared store)
        self.leads: Callable[[], bool] = lambda: True
        #: called after nodes were added (the health monitor probes them at once)
        self.on_added: Callable[[], None] = lambda: None

    # --- looking up ----------------------------------------------------------------------
    async def resolve_once(self, force: bool = False) -> None:
        """Look every source up, then apply the answers. ``force`` (NODE UPDATE) also runs on
        an instance that does not lead."""
        if not force and not self.leads():
            return
        async with self._lock:
            await asyncio.gather(*(self._lookup(s) for s in self.sources))
            await self._apply()

    async def _lookup(self, source: DiscoverySource) -> None:
        label = source.label
        try:
            found = await self.resolver.lookup(source)
        except LookupFailed as e:
            self._failed(label, f"lookup failed ({e})")
            return
        except Exception as e:  # never let one source take the round down
            log.exception("discovery: %s: lookup crashed", label)
            self._failed(label, f"lookup crashed ({type(e).__name__})")
            return
        if not found:
            self._failed(label, "answered no address")
            return
        if label in self.failures or self.answers.get(label) != found:
            log.info("discovery: %s lists %s", label, ", ".join(_key(f) for f in found))
        self.failures.pop(label, None)
        self.answers[label] = found

    def _failed(self, label: str, why: str) -> None:
        kept = len(self.answers.get(label, []))
        if self.failures.get(label) != why:
            log.warning("discovery: %s %s; keeping its last %d nodes", label, why, kept)
        else:
            log.debug("discovery: %s %s again", label, why)
        self.failures[label] = why

    # --- applying ------------------------------------------------------------------------
    async def _apply(self) -> None:
        self._round_routes = None
        by_label = {s.label: s for s in self.sources}
        wanted: dict[str, tuple[Found, DiscoverySource]] = {}
        for label, listed in self.answers.items():
            for f in listed:
                wanted.setdefault(_key(f), (f, by_label[label]))
        added = 0
        for key, (found, source) in wanted.items():
            node = self.registry.get(key)
            if node is None:
                added += await self._add(found, source)
            elif node.discovered and (node.draining or node.token != source.token):
                if node.draining:
                    log.info("discovery: %s is listed again; it takes tasks again", key)
                await self.registry.set_discovery(key, draining=False, token=source.token)
        if added:
            self.on_added()
        for node in self.registry.nodes():
            if not node.discovered or node.key in wanted:
                continue
            if node.discovered in by_label and node.discovered not in self.answers:
                continue  # its source has not answered yet since this instance started
            if not node.draining:
                log.info("discovery: %s is gone from %s; draining it", node.key, node.discovered)
                await self.registry.set_discovery(node.key, draining=True)
            elif await self._may_leave(node):
                await self.registry.remove(node.key)
                self.routes.forget_node(node.key)
                self._offline_since.pop(node.key, None)
                log.info("discovery: %s drained; it left the cluster", node.key)

    async def _add(self, found: Found, source: DiscoverySource) -> int:
        try:
            await self.registry.add(
                found.hostname, found.port, source.token, discovered=source.label
            )
        except BadAddress as e:  # an SRV record with port 0, say: said once, not every round
            key = _key(found)
            if key not in self._refused:
                self._refused.add(key)
                log.warning("discovery: %s from %s refused: %s", key, source.label, e.message)
            return 0
        except InvalidRequest as e:  # added meanwhile (NODE ADD, another instance)
            log.debug("discovery: %s not added: %s", _key(found), e.message)
            return 0
        log.info("discovery: %s found by %s", _key(found), source.label)
        return 1

    async def _may_leave(self, node: Node) -> bool:
        """True once no task needs the node: none being sent to it or running on it."""
        key = node.key
        if self.registry.transients(key) > 0:
            return False
        if any(
            t.node_key == key and t.stage in (TaskStage.DISPATCHING, TaskStage.LANDED)
            for t in self.table.entries()
        ):
            return False  # landed tasks keep their images: failover moves them if it dies
        if not self.registry.is_online(node):
            since = self._offline_since.setdefault(key, self.clock())
            return self.clock() - since >= self.offline_grace_s
        self._offline_since.pop(key, None)
        if self._round_routes is None:
            self._round_routes = await self.list_routes()
        routes = [r for r in self._round_routes if r.node_key == key]
        now_ms = int(self.clock() * 1000)
        gate = asyncio.Semaphore(TASK_CHECK_CONCURRENCY)

        async def done(route: Route) -> bool:
            accessed = max(route.accessed_ms, self.routes.accessed_ms(route.uuid))
            if now_ms - accessed < self.linger_s * 1000:
                return False
            async with gate:
                try:
                    async with timeout(TASK_CHECK_TIMEOUT_S):
                        info = await self.client.task_info(node, route.uuid)
                except NodeRejected as e:
                    return e.message.endswith("not found")  # the node no longer knows it
                except (NodeError, TimeoutError, asyncio.TimeoutError):
                    return False
            return status_code(info) not in ACTIVE

        results = await asyncio.gather(*(done(r) for r in routes))
        return all(results)

    # --- running -------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Look up forever; started and cancelled by the app like the health monitor."""
        while True:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval_s)
            except (TimeoutError, asyncio.TimeoutError):
                pass
            try:
                await self.resolve_once()
            except Exception:
                log.exception("discovery round failed")


def _key(found: Found) -> str:
    return node_key(found.hostname, found.port)
