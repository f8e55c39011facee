"""Admin CLI over real TCP connections to a running cluster with simulated nodes."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from clusterodm import __version__
from clusterodm.admin import AdminCli, AdminCommands, start_cli
from clusterodm.admin import telnet as telnet_mod
from clusterodm.app import Cluster
from tests.admin import TelnetClient, make_task
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.helpers import eventually

CliFactory = Callable[..., Awaitable[AdminCli]]

# The original's NODE LIST line, as operators' scripts parse it.
NODE_LINE = re.compile(
    r"^(\d+)\) (\S+):(\d+) \[(online|offline)\] \[(\d+)/(\d+)\] "
    r"<engine: ([^>]*)> <API: ([^>]*)>( \[[LA](,[LA])?\])?$"
)
UUID = "78f14e5c-0d93-4196-843e-ebbf0f537676"


@pytest.fixture
async def cli_factory() -> AsyncIterator[CliFactory]:
    """Start the CLI of a cluster on a free port: ``await cli_factory(cluster, password="")``."""
    started: list[AdminCli] = []

    async def make(
        cluster: Cluster, password: str = "", autoscaler: object = None, **limits: Any
    ) -> AdminCli:
        cmds = AdminCommands(cluster.deps, autoscaler)  # type: ignore[arg-type]
        cli = await start_cli(cmds, "127.0.0.1", 0, password, **limits)
        started.append(cli)
        return cli

    yield make
    for cli in started:
        await cli.close()


@pytest.fixture
async def two_nodes(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, cli_factory: CliFactory
) -> AsyncIterator[tuple[Cluster, TelnetClient]]:
    """The recording's set-up: two nodes, the second with a node token and locked."""
    a = await simnode_factory(test_seconds=0.2)
    b = await simnode_factory(token="nodetok")
    cluster = await cluster_factory([a, b])
    await cluster.registry.set_locked(f"{b.host}:{b.port}", True)
    cli = await cli_factory(cluster)
    client, _ = await TelnetClient.connect(cli.port)
    yield cluster, client
    await client.close()


async def test_greeting_matches_the_original(
    cluster_factory: ClusterFactory, cli_factory: CliFactory
) -> None:
    cli = await cli_factory(await cluster_factory())
    client, greeting = await TelnetClient.connect(cli.port)
    lines = greeting.split("\r\n")
    assert re.fullmatch(rf"Welcome 127\.0\.0\.1:\d+ ClusterODM:{re.escape(__version__)}", lines[0])
    assert lines[1:] == ["HELP for help", "QUIT to quit", ""]
    await client.send(b"QUIT\r\n")
    assert await client.rest() == b"Bye!\r\n"


async def test_node_list_has_the_original_format(
    two_nodes: tuple[Cluster, TelnetClient],
) -> None:
    cluster, client = two_nodes
    lines = await client.cmd("NODE LIST")
    assert lines[-1] == "", "the original ends the list with an empty line"
    a, b = (NODE_LINE.match(line) for line in lines[:2])
    assert a and b, lines
    assert a.group(1, 4, 5, 6, 7, 9) == ("1", "online", "0", "1", "odm ?", None)
    assert b.group(1, 4, 9) == ("2", "online", " [L]")
    assert a.group(8) == cluster.registry.nodes()[0].info.version  # type: ignore[union-attr]


async def test_node_list_marks_offline_and_auto_spawned(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, cli_factory: CliFactory
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory([sim], refresh_interval_s=3600)
    await cluster.registry.set_machine(f"{sim.host}:{sim.port}", {"name": "m1"})
    await cluster.registry.set_locked(f"{sim.host}:{sim.port}", True)
    await sim.stop()
    cli = await cli_factory(cluster)
    client, _ = await TelnetClient.connect(cli.port)
    assert await client.cmd("NODE UPDATE") == ["OK"]
    (line, _) = await client.cmd("node list")
    m = NODE_LINE.match(line)
    assert m and m.group(4) == "offline" and m.group(9) == " [L,A]", line
    await client.close()


async def test_node_info_shape_without_token(two_nodes: tuple[Cluster, TelnetClient]) -> None:
    _, client = two_nodes
    data = json.loads("\n".join(await client.cmd("NODE INFO 2")))
    assert list(data) == ["hostname", "port", "info", "lastRefreshed", "locked"]
    assert isinstance(data["port"], str) and data["locked"] is True
    assert data["info"]["maxParallelTasks"] == 1 and data["lastRefreshed"] > 0
    assert "nodetok" not in json.dumps(data)
    assert await client.cmd("NODE INFO 9") == ["INVALID"], "as the original"
    assert await client.cmd("NODE INFO x") == ["INVALID"]


async def test_help_lists_every_command(two_nodes: tuple[Cluster, TelnetClient]) -> None:
    _, client = two_nodes
    text = "\n".join(await client.cmd("help"))
    for name in (
        "NODE ADD <hostname> <port> [token]",
        "NODE DEL",
        "NODE INFO",
        "NODE LIST",
        "NODE LOCK",
        "NODE UNLOCK",
        "NODE UPDATE",
        "NODE BEST",
        "ROUTE INFO",
        "ROUTE LIST",
        "TASK LIST",
        "TASK INFO",
        "TASK OUTPUT",
        "TASK CANCEL",
        "TASK REMOVE",
        "ASR VIEWCMD",
        "!!",
        "QUIT",
    ):
        assert name in text


async def test_lock_unlock_del_and_number_rules(two_nodes: tuple[Cluster, TelnetClient]) -> None:
    cluster, client = two_nodes
    first = cluster.registry.nodes()[0].key
    assert await client.cmd("NODE LOCK 1") == ["OK"]
    assert cluster.registry.get(first).locked  # type: ignore[union-attr]
    assert (await client.cmd("node list"))[0].endswith(" [L]")
    assert await client.cmd("Node Unlock 1") == ["OK"]
    assert not cluster.registry.get(first).locked  # type: ignore[union-attr]
    for bad in ("NODE LOCK 3", "NODE UNLOCK 0", "NODE DEL 9"):
        reply = await client.cmd(bad)
        assert reply in (["FAIL"], ["INVALID"]), (bad, reply)
    assert await client.cmd("NODE DEL 9") == ["FAIL"]
    assert await client.cmd("NODE LOCK") == ["INVALID"]
    assert await client.cmd("NODE LOCK one") == ["FAIL"], "as the original"
    assert await client.cmd("NODE DEL 1") == ["OK"]
    lines = await client.cmd("NODE LIST")
    assert len(lines) == 2 and lines[0].startswith("1) ") and lines[0].endswith(" [L]")
    assert cluster.registry.get(first) is None


async def test_unknown_and_malformed_commands(two_nodes: tuple[Cluster, TelnetClient]) -> None:
    _, client = two_nodes
    for line in ("FOO", "NODE", "NODE FROB 1", "TASK", "ROUTE LIST x", "NODE ADD host", "ASR"):
        assert await client.cmd(line) == ["INVALID"], line
    assert (await client.cmd("NODE ADD host 99999"))[-1] == "INVALID"
    assert await client.cmd("NODE BEST many") == ["INVALID"]


async def test_node_add_persists_across_restart(
    tmp_path: Path,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
    cli_factory: CliFactory,
) -> None:
    sim = await simnode_factory(token="secret")
    data_dir = tmp_path / "persist"
    cluster = await cluster_factory(data_dir=data_dir)
    cli = await cli_factory(cluster)
    client, _ = await TelnetClient.connect(cli.port)
    assert await client.cmd(f"NODE ADD {sim.host} {sim.port} secret") == ["OK"]
    assert await client.cmd(f"NODE ADD {sim.host} {sim.port}") == ["FAIL"], "duplicates refused"
    await eventually(lambda: cluster.registry.online_nodes(), timeout_s=10)
    (line, _) = await client.cmd("NODE LIST")
    assert NODE_LINE.match(line) and "[online]" in line
    await client.close()
    await cli.close()
    await cluster.stop()

    again = await cluster_factory(data_dir=data_dir)
    (node,) = again.registry.nodes()
    assert (node.hostname, node.port, node.token) == (sim.host, sim.port, "secret")


async def test_node_update_and_best(two_nodes: tuple[Cluster, TelnetClient]) -> None:
    _, client = two_nodes
    assert await client.cmd("NODE UPDATE") == ["OK"]
    (line,) = await client.cmd("NODE BEST 5")
    assert NODE_LINE.match(line) and line.startswith("1) "), "node 2 is locked"
    await client.cmd("NODE LOCK 1")
    assert await client.cmd("NODE BEST 5") == ["No best node available"]


async def test_routes_and_tasks(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, cli_factory: CliFactory
) -> None:
    sim = await simnode_factory(test_seconds=30)
    cluster = await cluster_factory([sim])
    uuid = await make_task(cluster)
    cli = await cli_factory(cluster)
    client, _ = await TelnetClient.connect(cli.port)

    route = json.loads("\n".join(await client.cmd(f"ROUTE INFO {uuid}")))
    assert route["node"] == {"hostname": sim.host, "port": str(sim.port)}
    assert route["accessed"] > 0
    assert await client.cmd(f"ROUTE INFO {UUID}") == ["INVALID"]
    assert list(json.loads("\n".join(await client.cmd("ROUTE LIST")))) == [uuid]
    assert list(json.loads("\n".join(await client.cmd("ROUTE LIST 1")))) == [uuid]
    assert await client.cmd("ROUTE LIST 2") == ["INVALID"]

    tasks = json.loads("\n".join(await client.cmd("TASK LIST")))
    assert [t["uuid"] for t in tasks] == [uuid]
    assert json.loads("\n".join(await client.cmd("TASK LIST 1")))[0]["uuid"] == uuid
    info = json.loads("\n".join(await client.cmd(f"TASK INFO {uuid}")))
    assert info["uuid"] == uuid and info["imagesCount"] == 2
    assert await client.cmd(f"TASK INFO {UUID}") == ["INVALID"]
    assert await client.cmd("TASK INFO not-a-uuid!") == ["INVALID"]

    async def has_output() -> list[str]:
        return [x for x in await client.cmd(f"TASK OUTPUT {uuid}") if x]

    lines = await eventually(has_output, timeout_s=10)
    assert all("\r" not in x for x in lines)
    assert await client.cmd(f"TASK OUTPUT {uuid} x") == ["INVALID"]

    assert await client.cmd(f"TASK CANCEL {uuid}") == ["{", '  "success": true', "}"]
    await eventually(lambda: int(sim.tasks[uuid].status) == 50, timeout_s=5)
    assert await client.cmd(f"task remove {uuid}") == ["{", '  "success": true', "}"]
    assert cluster.deps.routes.get(uuid) is None
    assert await client.cmd(f"TASK REMOVE {uuid}") == ["INVALID"]
    assert await client.cmd("TASK LIST") == ["[]"]
    await client.close()


async def test_node_del_forgets_its_routes(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, cli_factory: CliFactory
) -> None:
    cluster = await cluster_factory([await simnode_factory(test_seconds=30)])
    uuid = await make_task(cluster)
    client, _ = await TelnetClient.connect((await cli_factory(cluster)).port)
    refused = await client.cmd("NODE DEL 1")  # the node still runs the task
    assert refused[-1] == "FAIL" and "NODE LOCK 1" in refused[0] and "--force" in refused[0]
    assert cluster.deps.routes.get(uuid) is not None
    assert await client.cmd("NODE DEL 1 --forge") == ["INVALID"]
    assert await client.cmd("NODE DEL 1 --force") == ["OK"]
    assert cluster.deps.routes.get(uuid) is None
    assert await client.cmd(f"ROUTE INFO {uuid}") == ["INVALID"]
    await client.close()


class FakeAutoscaler:
    def view_command(self, images: int) -> str:
        return f"create-machine --size s-{images}"


async def test_asr_viewcmd(cluster_factory: ClusterFactory, cli_factory: CliFactory) -> None:
    cluster = await cluster_factory()
    plain, _ = await TelnetClient.connect((await cli_factory(cluster)).port)
    assert await plain.cmd("ASR VIEWCMD 10") == ["INVALID"], "as the original"
    assert await plain.cmd("ASR VIEWCMD ten") == ["INVALID"]
    scaled, _ = await TelnetClient.connect(
        (await cli_factory(cluster, autoscaler=FakeAutoscaler())).port
    )
    assert await scaled.cmd("asr viewcmd 10") == ["create-machine --size s-10"]
    assert await scaled.cmd("ASR VIEWCMD ten") == ["INVALID"]
    await plain.close()
    await scaled.close()


async def test_repeat_empty_lines_and_lf_only(two_nodes: tuple[Cluster, TelnetClient]) -> None:
    _, client = two_nodes
    assert await client.cmd("!!") == ["INVALID"], "nothing to repeat yet"
    assert await client.cmd("") == []
    assert await client.cmd("NODE LOCK 1") == ["OK"]
    assert await client.cmd("!!") == ["OK"]
    await client.send(b"NODE INFO 9\n")  # nc sends LF only
    assert await client.until() == "INVALID\r\n"
    assert await client.cmd("   ") == []


async def test_several_lines_in_one_packet(two_nodes: tuple[Cluster, TelnetClient]) -> None:
    _, client = two_nodes
    await client.send(b"NODE DEL 9\r\nFOO\r\nNODE LOCK 1\r\n")
    assert await client.until() == "FAIL\r\n"
    assert await client.until() == "INVALID\r\n"
    assert await client.until() == "OK\r\n"


async def test_huge_and_binary_lines(two_nodes: tuple[Cluster, TelnetClient]) -> None:
    _, client = two_nodes
    await client.send(b"NODE " + b"A" * (telnet_mod.LINE_LIMIT_BYTES * 3) + b"\r\n")
    assert await client.until() == "INVALID\r\n"
    assert await client.cmd("NODE INFO 9") == ["INVALID"], "connection still usable"
    assert await client.cmd("\x00\xff\xfe garbage \x1b[A") == ["INVALID"]
    await client.send(bytes(b for b in range(256) if b not in (10, 13)) + b"\r\n")
    assert await client.until() == "INVALID\r\n"
    assert await client.cmd("NODE LOCK 1") == ["OK"]


async def test_client_leaving_mid_command(
    two_nodes: tuple[Cluster, TelnetClient], cli_factory: CliFactory
) -> None:
    cluster, client = two_nodes
    cli = await cli_factory(cluster)
    for command in (b"NODE UPDATE\r\n", b"TASK LIST\r\n", b"NODE LIST\r\nNODE LIST\r\n"):
        leaver, _ = await TelnetClient.connect(cli.port)
        leaver.writer.write(command)
        leaver.writer.transport.abort()  # reset, no goodbye
    await eventually(lambda: not cli._sessions, timeout_s=10, message="sessions ended")
    assert await client.cmd("NODE DEL 9") == ["FAIL"]


async def test_login_rules(
    cluster_factory: ClusterFactory, cli_factory: CliFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cli = await cli_factory(await cluster_factory(), password="s3cret pass")
    client, greeting = await TelnetClient.connect(cli.port, prompt=b"$> ")
    assert greeting.split("\r\n")[1:] == ["LOGIN <password> to log-in", "QUIT to quit", ""]
    assert await client.cmd("NODE LIST", prompt=b"$> ") == ["LOGIN <password> first"]
    assert await client.cmd("HELP", prompt=b"$> ") == ["LOGIN <password> first"]
    assert await client.cmd("!!", prompt=b"$> ") == ["INVALID"]
    assert await client.cmd("login s3cret pass") == ["OK", "HELP for help"]
    assert await client.cmd("NODE LIST") == [""]
    await client.close()

    with caplog.at_level(logging.WARNING, logger="clusterodm.admin.telnet"):
        wrong, _ = await TelnetClient.connect(cli.port, prompt=b"$> ")
        await wrong.send(b"LOGIN s3cret\r\n")
        assert await wrong.rest() == b"FAIL\r\n"
    assert "wrong password from 127.0.0.1:" in caplog.text
    assert "s3cret" not in caplog.text


async def _connect_from(address: str, port: int, prompt: bytes = b"#> ") -> TelnetClient:
    """A CLI connection from a chosen loopback source address (127.0.0.0/8 all lead here)."""
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
        client = TelnetClient(reader, writer)
        await client.until(prompt)
    return client


async def test_login_timeout_and_connection_cap(
    cluster_factory: ClusterFactory, cli_factory: CliFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telnet_mod, "LOGIN_TIMEOUT_S", 0.2)
    monkeypatch.setattr(telnet_mod, "MAX_CONNECTIONS", 2)
    cli = await cli_factory(await cluster_factory(), password="pw")
    idle, _ = await TelnetClient.connect(cli.port, prompt=b"$> ")
    assert await idle.rest() == b"Timed out\r\n"
    monkeypatch.setattr(telnet_mod, "LOGIN_TIMEOUT_S", 60.0)
    held = [await _connect_from(f"127.0.0.{i}", cli.port, b"$> ") for i in (2, 3)]
    async with asyncio.timeout(5):  # full, and no address holds more than its one session
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", cli.port, local_addr=("127.0.0.4", 0)
        )
        assert b"Too many admin connections" in await reader.read()
    writer.close()
    for c in held:
        await c.close()


async def test_idle_connections_of_one_address_do_not_lock_out_admins(
    cluster_factory: ClusterFactory, cli_factory: CliFactory
) -> None:
    """64 idle connections from one address (the total cap): another address still gets in,
    and so does that address, each time in the place of its own longest-idle session."""
    cli = await cli_factory(await cluster_factory(), max_per_address=64)
    flood = [await _connect_from("127.0.0.2", cli.port) for _ in range(64)]
    assert len(cli._open) == 64
    admin = await _connect_from("127.0.0.3", cli.port)
    assert await admin.cmd("NODE LIST") == [""]
    assert b"Closed: too many admin connections" in await flood[0].rest(), "the idlest went"
    again = await _connect_from("127.0.0.2", cli.port)
    assert await again.cmd("NODE LIST") == [""]
    assert len(cli._open) == 64
    for c in [*flood[1:], admin, again]:
        await c.close()


async def test_per_address_limit_and_idle_timeout(
    cluster_factory: ClusterFactory, cli_factory: CliFactory
) -> None:
    cli = await cli_factory(await cluster_factory(), max_per_address=3, idle_timeout_s=0.5)
    first = await _connect_from("127.0.0.2", cli.port)
    assert await first.rest() == b"Timed out\r\n", "idle after the configured time"
    cli_long = await cli_factory(await cluster_factory(), max_per_address=3)
    mine = [await _connect_from("127.0.0.2", cli_long.port) for _ in range(3)]
    await mine[1].cmd("NODE LIST")  # the others stay idler
    fourth = await _connect_from("127.0.0.2", cli_long.port)
    assert b"Closed" in await mine[0].rest()
    assert len([s for s in cli_long._open if s.address == "127.0.0.2"]) == 3
    for c in [*mine[1:], fourth]:
        assert await c.cmd("NODE LIST") == [""]
        await c.close()


async def test_many_admin_connections_do_not_slow_the_proxy(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, cli_factory: CliFactory
) -> None:
    cluster = await cluster_factory([await simnode_factory()])
    cli = await cli_factory(cluster, max_per_address=64)
    clients = [(await TelnetClient.connect(cli.port))[0] for _ in range(40)]

    async def chatter(client: TelnetClient) -> None:
        for _ in range(10):
            assert (await client.cmd("NODE LIST"))[0].startswith("1) ")
            await client.send(b"X" * 50_000 + b"\r\n")
            assert await client.until() == "INVALID\r\n"

    async with aiohttp.ClientSession() as s:
        background = asyncio.gather(*(chatter(c) for c in clients))
        started = time.monotonic()
        for _ in range(20):
            async with s.get(f"{cluster.url}/info") as r:
                assert r.status == 200
        proxy_s = time.monotonic() - started
        await background
    assert proxy_s < 5.0, f"20 proxy requests took {proxy_s:.2f}s under admin load"
    for c in clients:
        await c.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_start_admin_serves_both_ports_from_settings(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    cli_port, web_port = _free_port(), _free_port()
    cluster = await cluster_factory(
        [await simnode_factory()], admin_cli_port=cli_port, admin_web_port=web_port
    )
    assert cluster.extra["admin-cli"].port == cli_port
    assert cluster.site_port("admin-web") == web_port
    client, _ = await TelnetClient.connect(cli_port)
    assert (await client.cmd("NODE LIST"))[0].startswith("1) ")
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{web_port}/r/info") as r:
        assert (await r.json())["nodes"] == 1
    await client.close()
    await cluster.stop()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", cli_port)
