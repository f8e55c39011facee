"""AdminCommands: what an operator can do to a running cluster, one typed method per command.

Shared by both admin fronts (``telnet.py`` and ``web.py``) so the CLI and the web page apply the
same rules and show the same data. Methods return domain data or JSON-ready dicts and raise
``ClusterError`` families; the fronts decide how to print them (``OK``/``FAIL``/``INVALID`` on the
CLI, JSON with a status code on the web). Node numbers are 1-based, in the registry's list
order, as the original numbers them.

Node tokens never leave this module: every node view drops them (original: ``NODE INFO``,
``ROUTE INFO`` and ``/r/node/list`` print them; here they are omitted because anyone who can
read the admin page would otherwise get credentials for every node).

Imports use cases (registry, health, routes, table, task actions), never adapters or the proxy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from clusterodm import __version__
from clusterodm.compat import timeout
from clusterodm.errors import ClusterError, InvalidRequest, NodeError, TaskNotFound
from clusterodm.model import Node, Route, TaskEntry, TaskStatus
from clusterodm.nodes import paths
from clusterodm.nodes.address import check_port
from clusterodm.nodes.discovery import NodeIsDiscovered
from clusterodm.proxy.deps import ProxyDeps
from clusterodm.tasks.concurrency import ACTIVE, status_code

log = logging.getLogger(__name__)

NAME = "ClusterODM"
NO_AUTOSCALER = "No autoscaler configured (start with --asr config.json)"
TASK_QUERY_CONCURRENCY = 16
"""Nodes asked for task info at once by TASK LIST and the web page's task table."""
TASK_QUERY_TIMEOUT_S = 5.0
"""A node slower than this to describe one task is left out of a listing, not waited for."""
ADD_PROBE_WAIT_S = 5.0
"""NODE ADD waits this long for the new node's first /info before answering."""
TASK_LIST_MAX = 1000
"""TASK LIST asks nodes about at most this many routes (most recently used first)."""

STATUS_NAMES = {s.value: s.name.lower() for s in TaskStatus}


class NodeOutOfRange(ClusterError):
    """No node has this number (the CLI answers as the original per command, the web ``false``)."""


class NodeBusy(ClusterError):
    """NODE DEL of a node that still runs tasks of the cluster, without ``--force``: removing
    it would start those tasks again elsewhere while the node goes on with them."""

    def __init__(self, message: str, uuids: list[str]) -> None:
        super().__init__(message)
        self.uuids = uuids


class ViewCommand(Protocol):
    """What the admin needs from an autoscaler: the command it would run to create a machine."""

    def view_command(self, images: int) -> str: ...


@dataclass(frozen=True, slots=True)
class NodeView:
    """A node as the admin shows it: its number, runtime state and the original's derived fields."""

    number: int
    node: Node
    online: bool

    @property
    def name(self) -> str:
        return self.node.key

    @property
    def queue(self) -> int:
        return self.node.info.task_queue_count if self.node.info else 0

    @property
    def max_parallel(self) -> int:
        return self.node.info.max_parallel_tasks if self.node.info else 0

    @property
    def engine_info(self) -> str:
        info = self.node.info
        return f"{info.engine} {info.engine_version}" if info else "?"

    @property
    def api_version(self) -> str:
        info = self.node.info
        return info.version if info and info.version else "?"

    @property
    def flags(self) -> list[str]:
        out = []
        if self.node.locked:
            out.append("L")
        if self.node.auto_spawned:
            out.append("A")
        if self.node.discovered:
            out.append("D")  # found by --nodes-from; "draining" once DNS stops listing it
        if self.node.draining:
            out.append("draining")
        return out

    def line(self) -> str:
        """The original's NODE LIST line, which operators' scripts parse."""
        state = "[online]" if self.online else "[offline]"
        flags = f" [{','.join(self.flags)}]" if self.flags else ""
        return (
            f"{self.number}) {self.name} {state} [{self.queue}/{self.max_parallel}]"
            f" <engine: {self.engine_info}> <API: {self.api_version}>{flags}"
        )

    def node_data(self) -> dict[str, Any]:
        """The original's ``nodeData`` (port as a string, ``locked`` only when set), no token."""
        data: dict[str, Any] = {
            "hostname": self.node.hostname,
            "port": str(self.node.port),
            "info": self.node.info.to_json() if self.node.info else {},
            "lastRefreshed": self.node.last_refreshed_ms,
        }
        if self.node.locked:
            data["locked"] = True
        return data

    def list_item(self) -> dict[str, Any]:
        """One ``/r/node/list`` item: the original's field names, plus ``number``."""
        return {
            "number": self.number,
            "name": self.name,
            "isLocked": self.node.locked,
            "isAutoSpawned": self.node.auto_spawned,
            "discoveredBy": self.node.discovered or None,
            "isDraining": self.node.draining,
            "isOnline": self.online,
            "getTaskQueueCount": self.queue,
            "getMaxParallelTasks": self.max_parallel,
            "getEngineInfo": self.engine_info,
            "getVersion": self.api_version,
            "lastRefreshed": self.node.last_refreshed_ms,
            "nodeData": self.node_data(),
        }


def route_json(route: Route, node: Node | None, accessed_ms: int) -> dict[str, Any]:
    """A route as the original's ``ROUTE INFO`` prints it, without any token."""
    if node is not None:
        where: dict[str, Any] = {"hostname": node.hostname, "port": str(node.port)}
    else:
        host, _, port = route.node_key.rpartition(":")
        where = {"hostname": host, "port": port}
    return {"node": where, "accessed": accessed_ms}


def _now_ms() -> int:
    return int(time.time() * 1000)


class AdminCommands:
    """Every admin command, for both fronts. ``autoscaler`` plugs in when ``--asr`` is used."""

    def __init__(self, deps: ProxyDeps, autoscaler: ViewCommand | None = None) -> None:
        self.deps = deps
        self.autoscaler = autoscaler

    # --- nodes ---------------------------------------------------------------------------
    def nodes(self) -> list[NodeView]:
        reg = self.deps.registry
        # queue counts as the cluster knows them now (sent, removed, seen finished since /info)
        return [NodeView(i, reg.counted(n), reg.is_online(n)) for i, n in enumerate(reg.nodes(), 1)]

    def node(self, number: int) -> NodeView:
        node = self.deps.registry.by_number(number)
        if node is None:
            raise NodeOutOfRange(f"No node number {number}")
        reg = self.deps.registry
        return NodeView(number, reg.counted(node), reg.is_online(node))

    async def node_add(self, hostname: str, port: int | str, token: str = "") -> NodeView:
        """Add and persist a node (BadAddress for a host or port that cannot be a node's), then
        probe it at once, so the next NODE LIST shows its real state; a node slower than
        ``ADD_PROBE_WAIT_S`` is answered for as not yet online and probed on in the background.
        """
        reg = self.deps.registry
        node = await reg.add(hostname, check_port(port), token)
        await self.deps.health.refresh_now(node, ADD_PROBE_WAIT_S)
        current = reg.get(node.key) or node
        return NodeView(reg.number_of(node.key), current, reg.is_online(current))

    async def node_del(self, number: int, force: bool = False) -> NodeView:
        """Remove a node and its routes (the store drops them; memory is cleared here).

        A node still running tasks of the cluster is not removed unless ``force``: NodeBusy
        says how many and points to NODE LOCK (drain: no new tasks, then remove it once they
        end). With ``force`` the tasks whose images are kept move to other nodes (failover) and
        are cancelled and removed on this one first, so none runs twice; a task whose images
        are not kept cannot move and is left running there (its route goes with the node).
        A node that does not answer is removed at once: its kept tasks move as from a dead node.
        """
        view = self.node(number)
        if view.node.discovered:
            raise NodeIsDiscovered(
                f"Node {view.name} comes from {view.node.discovered}: it leaves when DNS stops "
                "listing it (NODE LOCK stops new tasks)"
            )
        node = view.node
        busy = await self._unfinished_on(node)
        if busy and not force:
            raise NodeBusy(
                f"node {number} ({node.key}) runs {len(busy)} unfinished task(s): NODE LOCK "
                f"{number} to drain it and NODE DEL {number} once they end, or NODE DEL "
                f"{number} --force to move them now (they are cancelled there)",
                busy,
            )
        kept = {t.uuid for t in self.deps.table.landed() if t.node_key == node.key}
        movable = [u for u in busy if u in kept]
        sem = asyncio.Semaphore(TASK_QUERY_CONCURRENCY)

        async def take_off(uuid: str) -> None:
            async with sem:
                for action in ("cancel", "remove"):
                    try:
                        await asyncio.wait_for(
                            self.deps.client.action(node, action, uuid, {}), TASK_QUERY_TIMEOUT_S
                        )
                    except (NodeError, TimeoutError, asyncio.TimeoutError) as e:
                        log.warning(
                            "task %s: %s on removed node %s failed: %s", uuid, action, node.key, e
                        )

        await asyncio.gather(*(take_off(u) for u in movable))
        await self.deps.registry.remove(node.key)
        self.deps.routes.forget_node(node.key)
        if busy:
            log.warning(
                "node %s removed with --force: %d task(s) move, %d cannot (images not kept)",
                node.key,
                len(movable),
                len(busy) - len(movable),
            )
        return view

    async def _unfinished_on(self, node: Node) -> list[str]:
        """The cluster's tasks the node reports queued or running; [] if it does not answer."""
        ours = {r.uuid for r in self.deps.routes.all() if r.node_key == node.key}
        ours |= {t.uuid for t in self.deps.table.landed() if t.node_key == node.key}
        if not ours:
            return []
        try:
            listed = await asyncio.wait_for(
                self.deps.client.get_json(node, paths.fixed("/task/list")), TASK_QUERY_TIMEOUT_S
            )
        except (NodeError, TimeoutError, asyncio.TimeoutError):
            return []
        there = {str(x.get("uuid")) for x in listed if isinstance(x, dict)} & ours
        sem = asyncio.Semaphore(TASK_QUERY_CONCURRENCY)

        async def running(uuid: str) -> bool:
            async with sem:
                try:
                    info = await asyncio.wait_for(
                        self.deps.client.task_info(node, uuid), TASK_QUERY_TIMEOUT_S
                    )
                except (NodeError, TimeoutError, asyncio.TimeoutError):
                    return True  # it is there; unknown state counts as unfinished
            return status_code(info) in ACTIVE

        uuids = sorted(there)
        flags = await asyncio.gather(*(running(u) for u in uuids))
        return [u for u, busy in zip(uuids, flags, strict=True) if busy]

    async def node_lock(self, number: int, locked: bool = True) -> NodeView:
        view = self.node(number)
        updated = await self.deps.registry.set_locked(view.node.key, locked)
        if updated is None:  # removed concurrently
            raise NodeOutOfRange(f"No node number {number}")
        return NodeView(number, updated, self.deps.registry.is_online(updated))

    async def node_update(self) -> None:
        """Look ``--nodes-from`` up again, then refresh every node's /info now and wait for the
        answers (each lookup and probe is bounded)."""
        if self.deps.discovery is not None:
            await self.deps.discovery.resolve_once(force=True)
        await self.deps.health.refresh_all()

    def node_best(self, images: int) -> NodeView | None:
        node = self.deps.registry.best(images)
        if node is None:
            return None
        reg = self.deps.registry
        return NodeView(reg.number_of(node.key), node, reg.is_online(node))

    # --- routes --------------------------------------------------------------------------
    def route_info(self, uuid: str) -> dict[str, Any]:
        route = self.deps.routes.get(uuid)
        if route is None:
            raise TaskNotFound(f"No route for {uuid}")
        return self._route_json(route)

    def route_list(self, number: int | None = None) -> dict[str, dict[str, Any]]:
        """Routes as the original lists them, ``{uuid: {node, accessed}}``; or one node's."""
        return {r.uuid: self._route_json(r) for r in self._routes_of(number)}

    def recent_routes(self, limit: int) -> list[dict[str, Any]]:
        """The ``limit`` most recently used routes, newest first, for the web page."""
        out = []
        for route in self._recent(None, limit):
            item = self._route_json(route)
            item["uuid"] = route.uuid
            item["name"] = route.node_key
            item["number"] = self.deps.registry.number_of(route.node_key)
            out.append(item)
        return out

    def _route_json(self, route: Route) -> dict[str, Any]:
        node = self.deps.registry.get(route.node_key)
        return route_json(route, node, self.deps.routes.accessed_ms(route.uuid))

    def _routes_of(self, number: int | None) -> list[Route]:
        routes = self.deps.routes.all()
        if number is None:
            return routes
        key = self.node(number).node.key
        return [r for r in routes if r.node_key == key]

    def _recent(self, number: int | None, limit: int) -> list[Route]:
        routes = self._routes_of(number)
        accessed = self.deps.routes.accessed_ms
        routes.sort(key=lambda r: accessed(r.uuid), reverse=True)
        return routes[:limit]

    # --- tasks ---------------------------------------------------------------------------
    async def task_list(self, number: int | None = None) -> list[Any]:
        """Task infos from their nodes (the original's TASK LIST), then tasks the proxy holds.

        Nodes are asked concurrently and bounded; a task whose node fails or is slow is left
        out, as the original leaves out tasks whose info is an error.
        """
        routes = self._recent(number, TASK_LIST_MAX)
        infos = await self._node_infos(routes)
        out: list[Any] = [info for info in infos if info is not None]
        if number is None:
            now = _now_ms()
            out.extend(t.info_json(now) for t in self._held())
        return out

    def _held(self) -> list[TaskEntry]:
        """Tasks the proxy answers for; one that already has a route is landing on its node
        and is listed from there."""
        routed = self.deps.routes.get
        return [t for t in self.deps.table.all() if routed(t.uuid) is None]

    async def task_overview(self, limit: int) -> list[dict[str, Any]]:
        """For the web page: each known task with its node and status, newest first."""
        rows: list[dict[str, Any]] = []
        now = _now_ms()
        for task in sorted(self._held(), key=lambda t: -t.date_created_ms)[:limit]:
            rows.append(self._held_row(task, now))
        routes = self._recent(None, max(0, limit - len(rows)))
        errors: dict[str, str] = {}
        infos = await self._node_infos(routes, errors)
        for route, info in zip(routes, infos, strict=True):
            row = self._routed_row(route, info)
            if info is None:
                row["error"] = self._why_unknown(route, errors.get(route.uuid))
                if errors.get(route.uuid, "").endswith("not found"):
                    row["statusName"] = "lost"
            rows.append(row)
        return rows

    def _why_unknown(self, route: Route, error: str | None) -> str:
        """Why a routed task has no status: its node is gone, offline, forgot it, or is slow."""
        node = self.deps.registry.get(route.node_key)
        if node is None:
            return f"Node {route.node_key} was removed from the cluster"
        if not self.deps.registry.is_online(node):
            why = self.deps.registry.offline_reasons.get(node.key)
            return f"Node {node.key} is offline" + (f": {why}" if why else "")
        if error and error.endswith("not found"):
            return f"Node {node.key} no longer knows this task"
        if error:
            return f"Node {node.key} answered: {error}"
        return f"Node {node.key} did not answer within {TASK_QUERY_TIMEOUT_S:g} s"

    def _held_row(self, task: TaskEntry, now_ms: int) -> dict[str, Any]:
        return {
            "uuid": task.uuid,
            "name": task.name,
            "node": task.node_key,
            "number": self.deps.registry.number_of(task.node_key) if task.node_key else 0,
            "source": "proxy",
            "stage": task.stage.value,
            "status": int(task.status),
            "statusName": STATUS_NAMES.get(int(task.status), "unknown"),
            "progress": task.progress,
            "imagesCount": task.images_count,
            "dateCreated": task.date_created_ms,
            "processingTime": task.info_json(now_ms)["processingTime"],
            "error": task.error_message,
        }

    def _routed_row(self, route: Route, info: Any) -> dict[str, Any]:
        row: dict[str, Any] = {
            "uuid": route.uuid,
            "name": None,
            "node": route.node_key,
            "number": self.deps.registry.number_of(route.node_key),
            "source": "node",
            "stage": "on node",
            "status": None,
            "statusName": "unknown",
            "progress": None,
            "imagesCount": None,
            "dateCreated": None,
            "processingTime": None,
            "error": None,
            "accessed": self.deps.routes.accessed_ms(route.uuid),
        }
        node = self.deps.registry.get(route.node_key)
        if info is None and (node is None or not self.deps.registry.is_online(node)):
            row["statusName"] = "unreachable"
        if isinstance(info, dict):
            status = info.get("status")
            code = status.get("code") if isinstance(status, dict) else None
            row.update(
                name=info.get("name"),
                status=code if isinstance(code, int) else None,
                statusName=STATUS_NAMES.get(code, "unknown") if isinstance(code, int) else "?",
                progress=info.get("progress"),
                imagesCount=info.get("imagesCount"),
                dateCreated=info.get("dateCreated"),
                processingTime=info.get("processingTime"),
                error=status.get("errorMessage") if isinstance(status, dict) else None,
            )
        return row

    async def _node_infos(
        self, routes: list[Route], errors: dict[str, str] | None = None
    ) -> list[Any]:
        """Ask each route's node for its task info; None where the node fails or is slow (and
        the node's error by uuid in ``errors``, when given)."""
        if not routes:
            return []
        gate = asyncio.Semaphore(TASK_QUERY_CONCURRENCY)
        client = self.deps.client

        async def one(route: Route) -> Any:
            node = self.deps.registry.get(route.node_key)
            if node is None:
                return None
            async with gate:
                try:
                    async with timeout(TASK_QUERY_TIMEOUT_S):
                        info = await client.task_info(node, route.uuid)
                except (NodeError, TimeoutError, asyncio.TimeoutError) as e:
                    log.debug("task info of %s from %s failed: %s", route.uuid, node.key, e)
                    if errors is not None and isinstance(e, NodeError):
                        errors[route.uuid] = e.message
                    return None
            return info

        return list(await asyncio.gather(*(one(r) for r in routes)))

    async def task_info(self, uuid: str) -> Any:
        return await self.deps.actions.info(uuid, None)

    async def task_output(self, uuid: str, line: int = 0) -> Any:
        return await self.deps.actions.output(uuid, None, line)

    async def task_action(self, action: str, uuid: str) -> dict[str, Any]:
        """cancel / remove: the node's answer (or the proxy's, for held tasks) as NodeODM gives
        it, ``{"success": true}`` or ``{"error": ...}``; TaskNotFound for an unknown task."""
        if action not in ("cancel", "remove"):
            raise InvalidRequest(f"Unknown task action {action!r}")
        answer = await self.deps.actions.act(action, uuid, None)
        if answer.get("success") is not True:
            log.info("task %s of %s refused: %.200s", action, uuid, answer.get("error"))
        return answer

    # --- autoscaler ----------------------------------------------------------------------
    def asr_view_command(self, images: int) -> str:
        if self.autoscaler is None:
            return NO_AUTOSCALER
        return self.autoscaler.view_command(images)

    # --- summary -------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """``/r/info``: the original's ``{name, version}`` plus counts for the page header."""
        views = self.nodes()
        return {
            "name": NAME,
            "version": __version__,
            "nodes": len(views),
            "onlineNodes": sum(1 for v in views if v.online),
            "lockedNodes": sum(1 for v in views if v.node.locked),
            "routes": len(self.deps.routes),
            "heldTasks": len(self.deps.table.all()),
            "autoscaler": self.autoscaler is not None,
        }
