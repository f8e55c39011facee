"""Admin CLI under hostile use, over real TCP: floods, bad hosts, hostile numbers (#14-#16).

Each admin session shares the event loop with the proxy, so what is measured here is the
proxy's ``/info`` latency while one admin client floods the CLI.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusterodm.admin import AdminCli, AdminCommands, start_cli
from clusterodm.admin import telnet as telnet_mod
from clusterodm.admin.cli_commands import execute
from clusterodm.app import Cluster
from clusterodm.cli import parse_settings
from clusterodm.config import ConfigError
from tests.admin import TelnetClient, make_task
from tests.admin.test_web import serve_admin
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.nodes.test_address import BAD_HOSTS

CliFactory = Callable[..., Awaitable[AdminCli]]
FLOOD_LINES = 200_000
INFO_LIMIT_S = 1.0
INFO_EVERY_S = 0.05
UNKNOWN_UUID = "78f14e5c-0d93-4196-843e-ebbf0f537676"


@pytest.fixture
async def cli_factory() -> AsyncIterator[CliFactory]:
    started: list[AdminCli] = []

    async def make(cluster: Cluster, password: str = "", **limits: Any) -> AdminCli:
        cli = await start_cli(AdminCommands(cluster.deps), "127.0.0.1", 0, password, **limits)
        started.append(cli)
        return cli

    yield make
    for cli in started:
        await cli.close()


async def _info_latencies(url: str, until: asyncio.Task[Any], bound_s: float) -> list[float]:
    """GET /info every ``INFO_EVERY_S`` until ``until`` is done; each answer's latency."""
    out: list[float] = []
    deadline = time.monotonic() + bound_s
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        while not until.done() and time.monotonic() < deadline:
            started = time.monotonic()
            async with s.get(f"{url}/info") as r:
                assert r.status == 200
                await r.read()
            out.append(time.monotonic() - started)
            await asyncio.wait([until], timeout=INFO_EVERY_S)
    return out


async def _read_all(reader: asyncio.StreamReader) -> int:
    total = 0
    while chunk := await reader.read(1 << 16):
        total += len(chunk)
    return total


@pytest.mark.parametrize("login", ["none", "before", "after"])
async def test_newline_flood_never_delays_http(
    login: str,
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
    cli_factory: CliFactory,
) -> None:
    """200,000 ``\\n`` in one write (with --admin-pass: before or after LOGIN); every /info on
    the proxy port meanwhile answers within a second."""
    cluster = await cluster_factory([await simnode_factory()])
    cli = await cli_factory(cluster, password="" if login == "none" else "pw")
    reader, writer = await asyncio.open_connection("127.0.0.1", cli.port)
    await reader.readuntil(b"$> " if login == "before" else b"#> " if login == "none" else b"$> ")
    head = b"LOGIN pw\r\n" if login == "after" else b""
    writer.write(head + b"\n" * FLOOD_LINES + b"QUIT\r\n")  # one write
    replies = asyncio.create_task(_read_all(reader))
    started = time.monotonic()
    latencies = await _info_latencies(cluster.url, replies, bound_s=120)
    received = await asyncio.wait_for(replies, 30)
    flood_s = time.monotonic() - started
    writer.close()
    assert latencies, "measured"
    assert max(latencies) < INFO_LIMIT_S, f"slowest /info {max(latencies):.3f}s in {flood_s:.1f}s"
    if login == "before":
        # answered up to the pre-login bound, then closed
        assert received < 100 * (telnet_mod.PRE_LOGIN_LINES + 10)
    else:
        assert received >= FLOOD_LINES * len(b"#> "), "every line answered"
        assert len(latencies) >= 3, f"the flood took {flood_s:.1f}s: /info was asked meanwhile"
    print(f"flood ({login}): {flood_s:.2f}s, {len(latencies)} /info, max {max(latencies):.3f}s")


async def test_bad_hosts_refused_by_node_add_with_a_reason(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, cli_factory: CliFactory
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory([sim])
    client, _ = await TelnetClient.connect((await cli_factory(cluster)).port)
    typed = [h for h in BAD_HOSTS if h and not any(c.isspace() for c in h) and "\x00" not in h]
    for host in typed:
        reply = await client.cmd(f"NODE ADD {host} 3000")
        assert reply[-1] == "INVALID" and len(reply) == 2, (host, reply)
        assert "ostname" in reply[0] or "address" in reply[0], reply
    for port in ("0", "65536", "²", "1" * 5000, "-1", "80x"):
        reply = await client.cmd(f"NODE ADD 127.0.0.1 {port}")
        assert reply == ["Port must be a number from 1 to 65535", "INVALID"], (port, reply)
    assert len(cluster.registry.nodes()) == 1
    lines = await client.cmd("NODE LIST")
    assert len(lines) == 2 and "[online]" in lines[0]
    await client.close()


async def test_bad_hosts_refused_by_the_web_page(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    cluster = await cluster_factory([await simnode_factory()])
    base = await serve_admin(cluster)
    async with aiohttp.ClientSession() as s:
        # the page trims blanks around a typed name; what is inside is checked
        for host in [*(h for h in BAD_HOSTS if h == h.strip()), " a\u0085b "]:
            body = {"hostname": host, "port": 3000}
            async with s.post(f"{base}/r/node/add", json=body) as r:
                assert r.status == 400, host
                assert isinstance((await r.json())["error"], str)
        for port in ["²", "①", "1" * 5000, 70000, -1, "3000x", True]:
            async with s.post(f"{base}/r/node/add", json={"hostname": "a", "port": port}) as r:
                assert r.status == 400, port
                assert "error" in await r.json()
    assert len(cluster.registry.nodes()) == 1


HOSTILE_NUMBERS = ["²", "①", "٣", "1" * 5000, "+1", "1_0", "0x1", "1.0", "1e3"]


async def test_hostile_numbers_get_the_original_codes(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory, cli_factory: CliFactory
) -> None:
    cluster = await cluster_factory([await simnode_factory(test_seconds=30)])
    uuid = await make_task(cluster)
    client, _ = await TelnetClient.connect((await cli_factory(cluster)).port)
    for n in HOSTILE_NUMBERS:
        for line in (f"NODE INFO {n}", f"ROUTE LIST {n}", f"TASK LIST {n}", f"NODE BEST {n}"):
            assert await client.cmd(line) == ["INVALID"], line
        assert await client.cmd(f"TASK OUTPUT {uuid} {n}") == ["INVALID"]
        for line in (f"NODE DEL {n}", f"NODE LOCK {n}", f"NODE UNLOCK {n}"):
            assert await client.cmd(line) == ["FAIL"], line  # the original: nth(NaN) -> false
    assert len(await client.cmd(f"TASK OUTPUT {uuid} -1")) <= 2, "negative: from the end"
    assert len(cluster.registry.nodes()) == 1 and not cluster.registry.nodes()[0].locked
    await client.close()


async def test_hostile_numbers_on_the_web_page(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    cluster = await cluster_factory([await simnode_factory()])
    base = await serve_admin(cluster)
    async with aiohttp.ClientSession() as s:
        for n in [*HOSTILE_NUMBERS, 10**4000, 0, -1, 1.5]:
            for method, path in (("POST", "lock"), ("POST", "unlock"), ("DELETE", "")):
                url = f"{base}/r/node/{path}".rstrip("/")
                async with s.request(method, url, json={"number": n}) as r:
                    assert r.status == 400, (path, n)
                    assert "error" in await r.json()
    assert len(cluster.registry.nodes()) == 1


async def test_node_add_shows_the_real_state_at_once(
    node_factory: Callable[..., Awaitable[Any]],
    cluster_factory: ClusterFactory,
    cli_factory: CliFactory,
) -> None:
    """#17: the node is probed before NODE ADD answers, so the next NODE LIST is true."""
    node = await node_factory()
    cluster = await cluster_factory(refresh_interval_s=3600)  # no periodic round to help
    client, _ = await TelnetClient.connect((await cli_factory(cluster)).port)
    assert await client.cmd(f"NODE ADD {node.host} {node.port}") == ["OK"]
    (line, _) = await client.cmd("NODE LIST")
    assert line.startswith(f"1) {node.host}:{node.port} [online] [0/1] "), line
    assert "<API: ?>" not in line
    assert await client.cmd("NODE ADD 127.0.0.1 1") == ["OK"], "a node that is down"
    lines = await client.cmd("NODE LIST")
    assert lines[1].startswith("2) 127.0.0.1:1 [offline] [0/0]"), lines
    await client.close()


async def test_web_node_add_probes_at_once(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    sim = await simnode_factory()
    cluster = await cluster_factory(refresh_interval_s=3600)
    base = await serve_admin(cluster)
    async with aiohttp.ClientSession() as s:
        body = {"hostname": sim.host, "port": sim.port}
        async with s.post(f"{base}/r/node/add", json=body) as r:
            assert r.status == 200 and (await r.json())["success"] is True
        async with s.get(f"{base}/r/node/list") as r:
            (item,) = await r.json()
    assert item["isOnline"] is True and item["getMaxParallelTasks"] == 1


def test_limit_flags() -> None:
    s = parse_settings(["--admin-cli-idle-timeout", "5", "--admin-cli-max-per-address", "2"])
    assert (s.admin_cli_idle_s, s.admin_cli_max_per_address) == (5.0, 2)
    defaults = parse_settings([])
    assert (defaults.admin_cli_idle_s, defaults.admin_cli_max_per_address) == (3600.0, 8)
    for bad in (["--admin-cli-idle-timeout", "0"], ["--admin-cli-max-per-address", "0"]):
        with pytest.raises(ConfigError, match="admin-cli"):
            parse_settings(bad)


async def test_limit_flags_reach_the_cli(
    cluster_factory: ClusterFactory, unused_tcp_port: int
) -> None:
    cluster = await cluster_factory(
        admin_cli_port=unused_tcp_port, admin_cli_idle_s=0.3, admin_cli_max_per_address=1
    )
    cli = cluster.extra["admin-cli"]
    assert (cli.idle_timeout_s, cli.max_per_address) == (0.3, 1)
    first, _ = await TelnetClient.connect(unused_tcp_port)
    assert await first.rest() == b"Timed out\r\n"


WORDS = ["NODE", "ROUTE", "TASK", "ASR", "ADD", "DEL", "INFO", "LIST", "LOCK", "UNLOCK"]
WORDS += ["UPDATE", "BEST", "OUTPUT", "CANCEL", "REMOVE", "VIEWCMD", "HELP", "!!", "LOGIN"]
ARGS = st.one_of(
    st.sampled_from(["1", "0", "-1", "²", "①", "٣", "1" * 5000, "127.0.0.1", "3000", "[::1]"]),
    st.sampled_from([UNKNOWN_UUID, "a\\b", "[", "%", "a]b", "127.0.0.1:1", "\u0085", "\x00"]),
    st.text(max_size=20),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)
LINES = st.builds(
    lambda words, args: " ".join([*words, *args]),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=2),
    st.lists(ARGS, max_size=3),
)


@pytest.fixture
async def commands(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> AdminCommands:
    """One cluster for all the examples of a test (fixtures run once per test, not per example):
    the examples may change it, none may crash."""
    return AdminCommands((await cluster_factory([await simnode_factory()])).deps)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(line=LINES)
async def test_any_command_line_gets_a_reply_never_a_crash(
    line: str, commands: AdminCommands
) -> None:
    """Generated command lines straight into the CLI's parser: every one gets reply lines, and
    nothing reaches the crash handler (a traceback or FAIL from a bug)."""
    crashes: list[str] = []
    handler = _Collect(crashes)
    logging.getLogger("clusterodm.admin.telnet").addHandler(handler)
    try:
        reply = await asyncio.wait_for(execute(commands, line), 30)
    finally:
        logging.getLogger("clusterodm.admin.telnet").removeHandler(handler)
    assert isinstance(reply, list) and all(isinstance(x, str) for x in reply)
    assert not crashes, (line, crashes)


class _Collect(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())
