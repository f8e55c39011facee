"""AdminCommands: the views both fronts print, and the commands against a real cluster."""

from __future__ import annotations

import aiohttp
import pytest

from clusterodm.admin.commands import (
    NO_AUTOSCALER,
    AdminCommands,
    NodeOutOfRange,
    NodeView,
    route_json,
)
from clusterodm.errors import InvalidRequest, TaskNotFound
from clusterodm.model import Node, NodeInfo, Route
from tests.admin import make_task
from tests.conftest import ClusterFactory, SimnodeFactory

INFO = NodeInfo(version="2.2.4", task_queue_count=3, max_parallel_tasks=4, engine_version="3.5.1")


@pytest.mark.parametrize(
    ("node", "online", "line"),
    [
        (
            Node("127.0.0.1", 3921, info=NodeInfo(version="2.2.4")),
            True,
            "1) 127.0.0.1:3921 [online] [0/1] <engine: odm ?> <API: 2.2.4>",
        ),
        (
            Node("n.example", 3000, locked=True, info=INFO),
            False,
            "1) n.example:3000 [offline] [3/4] <engine: odm 3.5.1> <API: 2.2.4> [L]",
        ),
        (
            Node("n", 1, machine={"id": "m"}, info=INFO),
            True,
            "1) n:1 [online] [3/4] <engine: odm 3.5.1> <API: 2.2.4> [A]",
        ),
        (
            Node("n", 1, locked=True, machine={}),
            False,
            "1) n:1 [offline] [0/0] <engine: ?> <API: ?> [L,A]",
        ),
    ],
)
def test_node_line(node: Node, online: bool, line: str) -> None:
    assert NodeView(1, node, online).line() == line


def test_node_data_and_list_item_hide_the_node_token() -> None:
    node = Node("h", 3001, token="nodetok", locked=True, info=INFO, last_refreshed_ms=5)
    view = NodeView(2, node, True)
    data = view.node_data()
    assert data == {
        "hostname": "h",
        "port": "3001",
        "info": INFO.to_json(),
        "lastRefreshed": 5,
        "locked": True,
    }
    item = view.list_item()
    assert "nodetok" not in repr(item)
    assert {
        "name",
        "isLocked",
        "isAutoSpawned",
        "isOnline",
        "getTaskQueueCount",
        "getMaxParallelTasks",
        "getEngineInfo",
        "getVersion",
        "nodeData",
    } <= set(item)
    assert (item["number"], item["name"], item["getTaskQueueCount"]) == (2, "h:3001", 3)
    assert "locked" not in NodeView(1, Node("h", 1), False).node_data()


def test_route_json_without_tokens() -> None:
    route = Route("u", "h:3000", owner="usertok", accessed_ms=7)
    assert route_json(route, Node("h", 3000, token="t"), 9) == {
        "node": {"hostname": "h", "port": "3000"},
        "accessed": 9,
    }
    assert route_json(route, None, 7)["node"] == {"hostname": "h", "port": "3000"}


async def test_commands_on_a_cluster(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory(test_seconds=30)
    cluster = await cluster_factory([sim])
    cmds = AdminCommands(cluster.deps)
    uuid = await make_task(cluster)

    assert [v.number for v in cmds.nodes()] == [1]
    with pytest.raises(NodeOutOfRange):
        cmds.node(2)
    with pytest.raises(InvalidRequest):
        await cmds.node_add(sim.host, sim.port)
    with pytest.raises(TaskNotFound):
        cmds.route_info("78f14e5c-0d93-4196-843e-ebbf0f537676")
    assert cmds.route_info(uuid)["node"]["port"] == str(sim.port)
    assert cmds.recent_routes(10)[0]["uuid"] == uuid
    assert cmds.recent_routes(0) == []

    (row,) = await cmds.task_overview(10)
    assert (row["uuid"], row["number"], row["source"]) == (uuid, 1, "node")
    assert row["statusName"] in ("queued", "running") and row["name"] == "survey <b>north</b>"

    info = cmds.info()
    assert info["name"] == "ClusterODM" and info["nodes"] == 1 and info["routes"] == 1
    assert cmds.asr_view_command(3) == NO_AUTOSCALER
    with pytest.raises(InvalidRequest):
        await cmds.task_action("restart", uuid)

    await sim.stop()
    (row,) = await cmds.task_overview(10)
    assert row["statusName"] in ("unknown", "unreachable"), "a dead node's task is listed"
    await cmds.node_update()
    (row,) = await cmds.task_overview(10)
    assert row["statusName"] == "unreachable"
    assert await cmds.task_list() == []


async def test_held_tasks_show_in_the_overview(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory([sim])
    await cluster.registry.set_locked(f"{sim.host}:{sim.port}", True)  # nowhere to dispatch
    cmds = AdminCommands(cluster.deps)
    async with aiohttp.ClientSession() as s:
        form = aiohttp.FormData()
        form.add_field("images", b"x", filename="a.jpg")
        r = await s.post(f"{cluster.url}/task/new", data=form)
        uuid = (await r.json())["uuid"]
    rows = await cmds.task_overview(10)
    assert [(r["uuid"], r["source"]) for r in rows] == [(uuid, "proxy")]
    assert [t["uuid"] for t in await cmds.task_list()] == [uuid]
    assert await cmds.task_action("cancel", uuid) == {"success": True}
    assert (await cmds.task_overview(10))[0]["statusName"] == "canceled"
