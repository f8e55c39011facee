"""HealthMonitor: refreshes every node's ``/info`` on an interval, concurrently, bounded.

Each probe has its own deadline (the client's info timeout), so one hung node never delays the
others, and its own error handling: whatever one node's refresh raises (a network error, a URL
that cannot be built, a store write that fails) is logged in one line and marks that node
offline, never cancels or touches another node's refresh (a TaskGroup would cancel them all).
Passive failures from real traffic also mark a node offline (``NodeRegistry``).
With a shared store only the leader instance probes (``leads``); the others read its results.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from clusterodm.errors import NodeError
from clusterodm.model import Node
from clusterodm.nodes.client import NodeClient
from clusterodm.nodes.registry import NodeRegistry

log = logging.getLogger(__name__)


class HealthMonitor:
    def __init__(self, registry: NodeRegistry, client: NodeClient, interval_s: float) -> None:
        self.registry = registry
        self.client = client
        self.interval_s = interval_s
        self._wake = asyncio.Event()
        self._probes: set[asyncio.Future[bool]] = set()
        #: nodes whose last refresh raised something other than a node error (logged once)
        self._faulty: set[str] = set()
        #: False while another instance refreshes for the whole cluster (shared store)
        self.leads: Callable[[], bool] = lambda: True

    async def refresh(self, node: Node) -> bool:
        """Probe one node; True if it answered a usable /info. Never raises (but cancellation):
        any failure is this node's alone."""
        asked_ms = self.registry.now_ms()  # what the cluster did after this stays counted
        try:
            info = await self.client.info(node)
        except NodeError as e:
            log.debug("refresh of %s failed: %s", node.key, e.message)
            self.registry.record_failure(node.key, e.message)
            return False
        except Exception as e:  # one node's fault must not reach the others
            self._fault(node, "failed", e)
            self.registry.record_failure(node.key)
            return False
        try:
            await self.registry.record_info(node.key, info, asked_ms)
        except Exception as e:
            self._fault(node, "not recorded", e)
            return False
        self._faulty.discard(node.key)
        return True

    def _fault(self, node: Node, what: str, e: Exception) -> None:
        """One line per node at warning when it starts failing this way, then at debug."""
        level = logging.DEBUG if node.key in self._faulty else logging.WARNING
        self._faulty.add(node.key)
        log.log(level, "refresh of %r %s: %s: %.200r", node.key, what, type(e).__name__, str(e))

    async def refresh_all(self) -> None:
        """Refresh every node at once; returns when each has answered or failed on its own."""
        nodes = self.registry.nodes()
        if not nodes:
            return
        await asyncio.gather(*(self.refresh(node) for node in nodes))

    async def refresh_now(self, node: Node, wait_s: float) -> bool:
        """Refresh one node now (a node just added) and wait at most ``wait_s`` for it; a
        slower node keeps being probed in the background and counts as not yet answered."""
        probe = asyncio.ensure_future(self.refresh(node))
        self._probes.add(probe)
        probe.add_done_callback(self._probes.discard)
        try:
            return await asyncio.wait_for(asyncio.shield(probe), wait_s)
        except (TimeoutError, asyncio.TimeoutError):
            return False

    def wake(self) -> None:
        """Ask for a refresh now (a node was added, or a dispatch failed)."""
        self._wake.set()

    async def run(self) -> None:
        """Refresh forever; started and cancelled by the app's cleanup context."""
        while True:
            try:
                if self.leads():
                    await self.refresh_all()
            except Exception:
                log.exception("node refresh round failed")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval_s)
            except (TimeoutError, asyncio.TimeoutError):
                pass
