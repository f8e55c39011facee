"""HealthMonitor: refreshes every node's ``/info`` on an interval, concurrently, bounded.

Each probe has its own deadline (the client's info timeout), so one hung node never delays the
others. Passive failures from real traffic also mark a node offline (``NodeRegistry``).
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
        #: False while another instance refreshes for the whole cluster (shared store)
        self.leads: Callable[[], bool] = lambda: True

    async def refresh(self, node: Node) -> bool:
        """Probe one node; True if it answered a usable /info."""
        try:
            info = await self.client.info(node)
        except NodeError as e:
            log.debug("refresh of %s failed: %s", node.key, e.message)
            self.registry.record_failure(node.key)
            return False
        await self.registry.record_info(node.key, info)
        return True

    async def refresh_all(self) -> None:
        nodes = self.registry.nodes()
        if not nodes:
            return
        async with asyncio.TaskGroup() as tg:
            for node in nodes:
                tg.create_task(self.refresh(node))

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
            except TimeoutError:
                pass
