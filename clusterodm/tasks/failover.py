"""FailoverMonitor: moves a task off a node that died, was removed, or forgot it.

Tasks whose images are kept (stage LANDED) are checked every few seconds: a node removed by an
admin, offline past the grace period, refusing connections on two checks some seconds apart
(its process is gone: no reason to wait for the grace, which stays for nodes that time out, as
a frozen or overloaded node may come back), or answering that it does not know the task loses
it, and the task is sent again, under the same uuid, to another node; the client keeps polling
the same uuid and reads in the output why it restarted. Once the node reports the task ended
the images are released. Original: the images are deleted once sent, so a dead node takes its
tasks down.
With a shared store only the leader instance checks (``leads``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from clusterodm.compat import TaskGroup, timeout
from clusterodm.config import FailoverSettings
from clusterodm.errors import NodeError, NodeRejected
from clusterodm.metrics import Metrics
from clusterodm.model import TaskEntry, TaskStage, TaskStatus
from clusterodm.nodes.client import NodeClient
from clusterodm.nodes.registry import NodeRegistry
from clusterodm.tasks.dispatch import Dispatcher
from clusterodm.tasks.events import TaskEvents
from clusterodm.tasks.routes import RouteTable
from clusterodm.tasks.table import TaskTable

log = logging.getLogger(__name__)

ENDED = (int(TaskStatus.FAILED), int(TaskStatus.COMPLETED), int(TaskStatus.CANCELED))


class FailoverMonitor:
    def __init__(
        self,
        registry: NodeRegistry,
        client: NodeClient,
        routes: RouteTable,
        table: TaskTable,
        dispatcher: Dispatcher,
        settings: FailoverSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.client = client
        self.routes = routes
        self.table = table
        self.dispatcher = dispatcher
        self.settings = settings
        self.clock = clock
        self._offline_since: dict[str, float] = {}
        self._refused_since: dict[str, float] = {}
        self.moves = 0
        self.metrics: Metrics | None = None
        #: False while another instance checks for the whole cluster (shared store)
        self.leads: Callable[[], bool] = lambda: True
        self.events = TaskEvents()  # app.py shares the cluster's

    async def check_once(self) -> None:
        await self.dispatcher.clear_leftovers()
        landed = self.table.landed()
        if not landed:
            return
        gone = await self._refusing({t.node_key or "" for t in landed})
        now = self.clock()
        online: list[TaskEntry] = []
        for task in landed:
            node = self.registry.get(task.node_key or "")
            if node is None:
                await self.move(task, f"Node {task.node_key} was removed from the cluster")
            elif node.key in gone:
                await self.move(task, f"Node {node.key} refuses connections")
            elif not self.registry.is_online(node):
                since = self._offline_since.setdefault(node.key, now)
                if now - since >= self.settings.grace_s:
                    await self.move(task, f"Node {node.key} went offline")
            else:
                self._offline_since.pop(node.key, None)
                online.append(task)
        async with TaskGroup() as tg:
            for task in online:
                tg.create_task(self._probe(task))

    async def _refusing(self, keys: set[str]) -> set[str]:
        """The nodes (of ``keys``) that refused a connection now and at a check at least
        ``refused_s`` ago, with none accepted in between; each refusal marks the node offline."""
        nodes = [n for k in keys if (n := self.registry.get(k)) is not None]
        refused = await asyncio.gather(*(_refuses(n.hostname, n.port) for n in nodes))
        now = self.clock()
        gone: set[str] = set()
        for node, no in zip(nodes, refused, strict=True):
            if not no:
                self._refused_since.pop(node.key, None)
                continue
            self.registry.record_failure(node.key)
            since = self._refused_since.setdefault(node.key, now)
            if now - since >= self.settings.refused_s:
                gone.add(node.key)
        for key in list(self._refused_since):
            if key not in keys:
                del self._refused_since[key]
        return gone

    async def _probe(self, task: TaskEntry) -> None:
        node = self.registry.get(task.node_key or "")
        if node is None:
            return
        try:
            info = await self.client.task_info(node, task.uuid)
        except NodeRejected as e:
            if e.message.endswith("not found"):
                await self.move(task, f"Node {node.key} no longer knows this task")
            return
        except NodeError:
            return  # unreachable: the health check decides when the node is offline
        code = info.get("status", {}).get("code") if isinstance(info, dict) else None
        if code in ENDED:
            await self.dispatcher.release_images(task.uuid)

    async def move(self, task: TaskEntry, why: str) -> None:
        """Send the task again to another node, or give up after too many moves."""
        current = self.table.get(task.uuid)
        if current is None or current.stage is not TaskStage.LANDED:
            return
        if current.failovers >= self.settings.max_moves:
            await self.table.update(
                task.uuid,
                stage=TaskStage.FAILED,
                status=TaskStatus.FAILED,
                error_message=f"{why}; the task was already moved {current.failovers} times.",
                output=(*current.output, f"{why}. Giving up after {current.failovers} moves."),
            )
            await self.routes.delete(task.uuid)
            log.error("task %s: %s; giving up", task.uuid, why)
            self.events.ended(task.uuid, "failed", why)
            return
        moves = current.failovers + 1
        self.events.moved(task.uuid, current.node_key or "", why, moves)
        await self.table.update(
            task.uuid,
            stage=TaskStage.COMMITTED,
            status=TaskStatus.RUNNING,
            failovers=moves,
            progress=0.0,
            started_ms=None,
            output=(*current.output, f"{why}. Restarting the task on another node ({moves})."),
        )
        await self.routes.delete(task.uuid)
        self.dispatcher.submit(task.uuid)
        self.moves += 1
        if self.metrics is not None:
            self.metrics.failovers.inc()
        log.warning("task %s: %s; moving it (move %d)", task.uuid, why, moves)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.check_s)
            try:
                if not self.leads():
                    continue
                await self.check_once()
            except Exception:
                log.exception("failover check failed")


CONNECT_PROBE_S = 3.0


async def _refuses(host: str, port: int) -> bool:
    """Whether a TCP connection to the node is refused (its process is gone). A timeout or any
    other failure is not a refusal: that node keeps the longer grace."""
    try:
        async with timeout(CONNECT_PROBE_S):
            _, writer = await asyncio.open_connection(host.strip("[]"), port)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError, asyncio.TimeoutError, ValueError, UnicodeError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False
