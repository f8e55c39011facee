"""TaskActions: find who answers for a task, and cancel / remove / restart it.

Shared by the proxy and the admin fronts, so both apply the same ownership rule and the same
handling of tasks the proxy still holds.

With a shared store (several instances), a route missing here is read from the store, and a
task the proxy holds is always read from the store (another instance may be dispatching it);
cancelling or removing it is announced so the instance running its dispatch stops.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from clusterodm.access.base import User
from clusterodm.compat import TaskGroup
from clusterodm.errors import NodeError, TaskNotFound
from clusterodm.model import ANY_UUID_RE, Node, TaskEntry, TaskStage, TaskStatus
from clusterodm.nodes import paths
from clusterodm.nodes.client import NodeClient
from clusterodm.nodes.registry import NodeRegistry
from clusterodm.tasks.concurrency import status_code
from clusterodm.tasks.dispatch import LAUNCHING, Dispatcher
from clusterodm.tasks.events import TaskEvents
from clusterodm.tasks.intake import TaskIntake
from clusterodm.tasks.routes import RouteTable
from clusterodm.tasks.table import TaskTable

ACTIONS = ("cancel", "remove", "restart")


class TaskActions:
    def __init__(
        self,
        registry: NodeRegistry,
        client: NodeClient,
        routes: RouteTable,
        table: TaskTable,
        dispatcher: Dispatcher,
        intake: TaskIntake,
        per_user: bool,
    ) -> None:
        self.events = TaskEvents()  # app.py shares the cluster's
        self.registry = registry
        self.client = client
        self.routes = routes
        self.table = table
        self.dispatcher = dispatcher
        self.intake = intake
        self.per_user = per_user
        #: set with a shared store: tells the other instances (``cancel <uuid>``)
        self.announce: Callable[[str], Awaitable[None]] | None = None

    def visible(self, user: User | None, owner: str) -> bool:
        """Admins (user None) see everything; with per-user tokens a user sees only theirs."""
        return user is None or not self.per_user or owner == user.owner

    async def locate(
        self, uuid: str, user: User | None, action: str
    ) -> tuple[Node | None, TaskEntry | None]:
        """The node that owns ``uuid``, or its task-table entry; TaskNotFound otherwise."""
        if action in ("cancel", "remove", "restart"):  # the original's words for these
            missing = TaskNotFound(f"Invalid route for taskId {uuid}, no nodes in routing table.")
        else:
            missing = TaskNotFound(
                f"Invalid route for taskId {uuid}:{action}, no task table entry."
            )
        if not ANY_UUID_RE.match(uuid):
            raise missing
        shared = self.announce is not None
        route = self.routes.get(uuid)
        if route is None and shared:
            route = await self.routes.fetch(uuid)
        if route is not None and self.visible(user, route.owner):
            node = self.registry.get(route.node_key)
            if node is not None:
                self.routes.touch(uuid)
                return node, None
        task = self.table.get(uuid)
        if shared and not self.dispatcher.active(uuid):
            task = await self.table.refresh(uuid)
        if task is not None and self.visible(user, task.owner):
            return None, task
        raise missing

    async def list_uuids(self, user: User | None) -> list[str]:
        """The caller's tasks: those the proxy holds, then those whose node still knows them.

        Nodes are asked for their lists at once, each with its own deadline; the routes of a
        node that does not answer are all listed (it may know them still).
        """
        held = [t.uuid for t in self.table.all() if self.visible(user, t.owner)]
        owner = user.owner if user is not None and self.per_user else None
        routes = [r for r in self.routes.for_owner(owner) if r.uuid not in set(held)]
        keys = {r.node_key for r in routes}
        known: dict[str, set[str] | None] = {}

        async def ask(key: str) -> None:
            node = self.registry.get(key)
            if node is None:
                known[key] = set()
                return
            try:
                listed = await self.client.get_json(
                    node, paths.fixed("/task/list"), total_s=self.client.timeouts.poll_s
                )
            except NodeError:
                known[key] = None
                return
            if not isinstance(listed, list):
                known[key] = None
                return
            known[key] = {str(x.get("uuid")) for x in listed if isinstance(x, dict)}

        async with TaskGroup() as tg:
            for key in keys:
                tg.create_task(ask(key))
        on_nodes = [r.uuid for r in routes if (k := known.get(r.node_key)) is None or r.uuid in k]
        return held + on_nodes

    async def info(self, uuid: str, user: User | None, with_output: int | None = None) -> Any:
        node, task = await self.locate(uuid, user, "info")
        if node is not None:
            query = {} if with_output is None else {"with_output": str(with_output)}
            asked_ms = self.registry.now_ms()
            answer = await self.client.get_json(node, paths.task(uuid, "info"), query)
            self.registry.task_seen(node.key, uuid, status_code(answer), asked_ms)
            return answer
        assert task is not None
        return task.info_json(int(time.time() * 1000), with_output)

    async def output(self, uuid: str, user: User | None, line: int = 0) -> Any:
        node, task = await self.locate(uuid, user, "output")
        if node is not None:
            return await self.client.get_json(node, paths.task(uuid, "output"), {"line": str(line)})
        assert task is not None
        return task.info_json(0, line)["output"]

    async def act(
        self, action: str, uuid: str, user: User | None, options: Any = None
    ) -> dict[str, Any]:
        """cancel / remove / restart; the answer as NodeODM gives it (``success`` or ``error``)."""
        node, task = await self.locate(uuid, user, action)
        if node is None:
            assert task is not None
            return await self._held(action, task, user, options)
        extra: dict[str, str] = {}
        if action == "restart" and options is not None:
            extra["options"] = options if isinstance(options, str) else json.dumps(options)
        try:
            answer = await self.client.action(node, action, uuid, extra)
        except NodeError:
            self.registry.record_failure(node.key)
            raise
        if answer.get("success") is not True:
            return answer
        if action in ("cancel", "remove"):
            self.events.ended(uuid, "cancelled" if action == "cancel" else "removed")
        # the node's queue changed: count it at once
        if action == "restart":
            self.registry.task_sent(node.key, uuid)
        else:
            self.registry.task_ended(node.key, uuid)
        if action == "remove":
            await self.routes.delete(uuid)
            if self.table.get(uuid) is not None:
                await self.dispatcher.release_images(uuid)
        return answer

    async def _held(
        self, action: str, task: TaskEntry, user: User | None = None, options: Any = None
    ) -> dict[str, Any]:
        """cancel / remove / restart of a task the proxy still holds."""
        if self.announce is not None and action in ("cancel", "remove"):
            await self.announce(f"cancel {task.uuid}")  # stop its dispatch on any instance
        if action in ("cancel", "remove"):
            self.events.ended(task.uuid, "cancelled" if action == "cancel" else "removed")
        if action == "cancel":
            await self.dispatcher.cancel(task.uuid)
            if not task.status.is_final:
                await self.table.update(
                    task.uuid, status=TaskStatus.CANCELED, stage=TaskStage.FAILED
                )
            return {"success": True}
        if action == "remove":
            await self.dispatcher.cancel(task.uuid)
            await self.table.delete(task.uuid)
            await self.intake.abandon(task.uuid)
            return {"success": True}
        # restart: a task that could not be dispatched is sent again from its staged images
        restartable = task.status in (TaskStatus.FAILED, TaskStatus.CANCELED)
        if not restartable or not self.intake.staging.exists(task.uuid):
            return {"success": False, "error": "Task cannot be restarted"}
        changes: dict[str, Any] = {}
        if options is not None:  # checked as the node would check them, then used as sent
            raw = options if isinstance(options, str) else json.dumps(options)
            changes["options"] = await self.intake.restart_options(user, raw)
        await self.table.update(
            task.uuid,
            **changes,
            stage=TaskStage.COMMITTED,
            status=TaskStatus.RUNNING,
            error_message=None,
            output=(LAUNCHING,),
        )
        self.dispatcher.submit(task.uuid)
        return {"success": True}
