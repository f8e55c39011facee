"""Discovery from DNS (``--nodes-from``) against a real DNS server on loopback (dnslib) and real
nodes on 127.0.0.2, 127.0.0.3, ... sharing one port, as ``docker compose --scale`` gives them."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterodm.admin.commands import AdminCommands
from clusterodm.admin.telnet import execute
from clusterodm.app import Cluster, start_cluster
from clusterodm.cli import parse_settings
from clusterodm.config import ConfigError, DiscoverySource, parse_dns_server
from clusterodm.nodes.discovery import Discovery, NodeIsDiscovered
from clusterodm.simnode import SimNode, SimNodeConfig, start_simnode
from tests.admin.test_web import open_page, serve_admin
from tests.conftest import ClusterFactory
from tests.conftest import test_settings as settings_for
from tests.e2e.test_queue_failover import FAST, info, new_task
from tests.helpers import eventually

if TYPE_CHECKING:
    from tests.dns_server import LoopbackDns

INTERVAL_S = 0.3
NAME = "nodeodm.test"


def shared_port(hosts: list[str]) -> int:
    """A port free on every one of ``hosts`` (compose gives every replica the same port)."""
    for _ in range(20):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on all of " + ", ".join(hosts))


@pytest.fixture
async def replicas() -> AsyncIterator[list[SimNode]]:
    """Three simulated nodes on 127.0.0.2-4, one port, 1.5 s per task."""
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    port = shared_port(hosts)
    nodes = [await start_simnode(SimNodeConfig(test_seconds=1.5), h, port) for h in hosts]
    yield nodes
    for node in nodes:
        await node.stop()


def discovering(dns: LoopbackDns, *urls: str, **extra: Any) -> dict[str, Any]:
    return {
        "nodes_from": urls,
        "dns_server": dns.address,
        "discovery_interval_s": INTERVAL_S,
        "dns_timeout_s": 0.5,
        **FAST,
        **extra,
    }


def keys(cluster: Cluster) -> list[str]:
    return [n.key for n in cluster.registry.nodes()]


def discovery_of(cluster: Cluster) -> Discovery:
    assert cluster.deps.discovery is not None
    return cluster.deps.discovery


# --- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "dns://nodeodm",  # no port
        "http://nodeodm:3000",
        "dns://127.0.0.1:3000",  # an address: NODE ADD it
        "dns://user:pw@nodeodm:3000",
        "dns://nodeodm:3000/path",
        "dns://nodeodm:3000?tok=x",
        "dns://nodeodm:70000",
        "dns+srv://_n._tcp.x:3000",
        "dns://no de:3000",
    ],
)
def test_bad_sources_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        DiscoverySource.parse(text)


@given(st.text(max_size=80))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    for candidate in (text, f"dns://{text}:3000", f"dns+srv://{text}"):
        try:
            source = DiscoverySource.parse(candidate)
        except ConfigError:
            continue
        assert source.kind in ("dns", "dns+srv") and source.name
        assert "token" not in source.label


@given(st.text(max_size=60))
def test_any_dns_server_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        host, port = parse_dns_server(text)
    except ConfigError:
        return
    assert host and 1 <= port <= 65535


def test_flags_and_config_file(tmp_path: Any) -> None:
    flags = ["--nodes-from", "dns://a.test:3000?token=t", "--nodes-from", "dns+srv://_n._tcp.b"]
    s = parse_settings([*flags, "--discovery-interval", "5", "--dns-server", "127.0.0.1:8600"])
    sources = s.discovery_sources()
    assert [x.label for x in sources] == ["dns://a.test:3000", "dns+srv://_n._tcp.b"]
    assert sources[0].token == "t" and s.discovery_interval_s == 5.0
    config = tmp_path / "c.json"
    config.write_text('{"nodes-from": ["dns://a.test:3000"], "discovery-interval": 2}')
    s = parse_settings(["--config", str(config)])
    assert s.nodes_from == ("dns://a.test:3000",) and s.discovery_interval_s == 2.0
    for bad in (["--dns-server", "dns.example"], ["--discovery-interval", "0"]):
        with pytest.raises(ConfigError):
            parse_settings(bad)
    for text in ('{"discovery-interval": null}', '{"nodes-from": 5}', '{"nodes-from": [{}]}'):
        config.write_text(text)
        with pytest.raises(ConfigError):
            parse_settings(["--config", str(config)])
    config.write_text('{"nodes-from": null}')
    assert parse_settings(["--config", str(config)]).discovery_sources() == []
    with pytest.raises(ConfigError):
        parse_settings(["--nodes-from", "dns://a.test:3000", "--nodes-from", "dns://a.test:3000"])


# --- the cluster ------------------------------------------------------------------------------


async def test_added_address_takes_tasks_within_one_interval(
    dns: LoopbackDns, replicas: list[SimNode], cluster_factory: ClusterFactory
) -> None:
    a, b, _ = replicas
    dns.set_a(NAME, [a.host])
    cluster = await cluster_factory(**discovering(dns, f"dns://{NAME}:{a.port}"))
    assert keys(cluster) == [f"{a.host}:{a.port}"]
    admin = AdminCommands(cluster.deps)
    line = admin.nodes()[0].line()
    assert line.endswith("[D]"), line

    dns.set_a(NAME, [a.host, b.host])
    changed = time.monotonic()
    b_key = f"{b.host}:{b.port}"
    node_b = await eventually(
        lambda: (n := cluster.registry.get(b_key)) is not None and cluster.registry.is_online(n),
        timeout_s=INTERVAL_S + 2.0,
        message="the new address online",
    )
    assert node_b
    print(f"address added to DNS -> node online: {time.monotonic() - changed:.2f} s")
    # lockable like any node: lock the first, the next task goes to the new one
    await admin.node_lock(1, True)
    async with aiohttp.ClientSession() as s:
        uuid = await new_task(s, cluster.url)
    await eventually(lambda: uuid in b.tasks, message="task on the discovered node")
    assert uuid not in a.tasks

    with pytest.raises(NodeIsDiscovered, match=r"dns://nodeodm\.test"):
        await admin.node_del(2)
    assert b_key in keys(cluster)
    web = [item for item in (v.list_item() for v in admin.nodes()) if item["name"] == b_key]
    assert web[0]["discoveredBy"] == f"dns://{NAME}:{a.port}" and not web[0]["isDraining"]


async def test_removed_address_drains_its_task_then_leaves(
    dns: LoopbackDns, replicas: list[SimNode], cluster_factory: ClusterFactory
) -> None:
    a, b, _ = replicas
    dns.set_a(NAME, [a.host])
    cluster = await cluster_factory(**discovering(dns, f"dns://{NAME}:{a.port}"))
    discovery_of(cluster).linger_s = 0.0
    a_key = f"{a.host}:{a.port}"
    async with aiohttp.ClientSession() as s:
        running = await new_task(s, cluster.url)
        await eventually(lambda: running in a.tasks, message="task on the first node")
        dns.set_a(NAME, [b.host])  # compose replaced the replica
        await eventually(
            lambda: (n := cluster.registry.get(a_key)) is not None and n.draining,
            timeout_s=INTERVAL_S + 2.0,
            message="the vanished address drained",
        )
        line = next(v.line() for v in AdminCommands(cluster.deps).nodes() if v.name == a_key)
        assert line.endswith("[D,draining]"), line
        await eventually(lambda: len(cluster.registry.online_nodes()) == 2, message="b online")
        fresh = await new_task(s, cluster.url)
        await eventually(lambda: fresh in b.tasks, message="new task on the new node")
        assert fresh not in a.tasks, "a draining node takes no new task"
        assert a_key in keys(cluster), "kept while its task runs"

        async def done() -> bool:
            return bool((await info(s, cluster.url, running))["status"]["code"] == 40)

        await eventually(done, timeout_s=15, message="the drained node's task completed")
        await eventually(
            lambda: a_key not in keys(cluster), timeout_s=5, message="drained node left"
        )
    assert keys(cluster) == [f"{b.host}:{b.port}"]


async def test_removed_address_that_died_fails_its_task_over_then_leaves(
    dns: LoopbackDns, replicas: list[SimNode], cluster_factory: ClusterFactory
) -> None:
    """Compose scaled down: the container is gone with its task; failover moves the task."""
    a, b, _ = replicas
    dns.set_a(NAME, [a.host])
    cluster = await cluster_factory(**discovering(dns, f"dns://{NAME}:{a.port}"))
    a_key = f"{a.host}:{a.port}"
    async with aiohttp.ClientSession() as s:
        uuid = await new_task(s, cluster.url)
        await eventually(lambda: uuid in a.tasks, message="task on the first node")
        await a.stop()
        dns.set_a(NAME, [b.host])
        await eventually(lambda: uuid in b.tasks, timeout_s=10, message="task moved to b")
        await eventually(lambda: a_key not in keys(cluster), timeout_s=10, message="dead node left")

        async def done() -> bool:
            return bool((await info(s, cluster.url, uuid))["status"]["code"] == 40)

        await eventually(done, timeout_s=15, message="the moved task completed")
    assert keys(cluster) == [f"{b.host}:{b.port}"]


async def test_dns_failure_keeps_the_last_answer(
    dns: LoopbackDns,
    replicas: list[SimNode],
    cluster_factory: ClusterFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b, _ = replicas
    dns.set_a(NAME, [a.host, b.host])
    cluster = await cluster_factory(**discovering(dns, f"dns://{NAME}:{a.port}"))
    expected = sorted([f"{a.host}:{a.port}", f"{b.host}:{b.port}"])
    assert sorted(keys(cluster)) == expected
    caplog.set_level(logging.INFO, logger="clusterodm.nodes.discovery")

    dns.remove(NAME)  # "no such name" for a moment: not an order to empty the cluster
    await eventually(lambda: "answered no address" in caplog.text, timeout_s=3)
    dns.fail(NAME)
    await eventually(lambda: "lookup failed" in caplog.text, timeout_s=3)
    dns.stop()
    await eventually(
        lambda: caplog.text.count("keeping its last 2 nodes") >= 2, timeout_s=3, message="logged"
    )
    await discovery_of(cluster).resolve_once(force=True)  # NODE UPDATE while DNS is down
    assert sorted(keys(cluster)) == expected
    assert not any(n.draining for n in cluster.registry.nodes())
    assert len(cluster.registry.online_nodes()) == 2


async def test_one_failing_source_leaves_the_others(
    dns: LoopbackDns, replicas: list[SimNode], cluster_factory: ClusterFactory
) -> None:
    a, b, c = replicas
    dns.set_a("one.test", [a.host])
    dns.set_a("two.test", [b.host])
    dns.fail("one.test")
    cluster = await cluster_factory(
        **discovering(dns, f"dns://one.test:{a.port}", f"dns://two.test:{b.port}")
    )
    assert keys(cluster) == [f"{b.host}:{b.port}"]
    dns.set_a("two.test", [b.host, c.host])
    await eventually(lambda: f"{c.host}:{c.port}" in keys(cluster), timeout_s=INTERVAL_S + 2)
    dns.fail("one.test", False)
    await eventually(lambda: f"{a.host}:{a.port}" in keys(cluster), timeout_s=INTERVAL_S + 2)
    assert discovery_of(cluster).failures == {}


async def test_srv_records_with_two_ports(
    dns: LoopbackDns, simnode_factory: Any, cluster_factory: ClusterFactory
) -> None:
    one, two = await simnode_factory(), await simnode_factory()
    dns.set_a("host.test", ["127.0.0.1"])
    dns.set_srv("_nodeodm._tcp.test", [("host.test", one.port), ("host.test", two.port)])
    cluster = await cluster_factory(**discovering(dns, "dns+srv://_nodeodm._tcp.test?token=tok"))
    assert sorted(keys(cluster)) == sorted(f"127.0.0.1:{p}" for p in (one.port, two.port))
    assert {n.token for n in cluster.registry.nodes()} == {"tok"}
    assert {n.discovered for n in cluster.registry.nodes()} == {"dns+srv://_nodeodm._tcp.test"}


async def test_manual_node_is_left_alone(
    dns: LoopbackDns, replicas: list[SimNode], cluster_factory: ClusterFactory
) -> None:
    a, b, _ = replicas
    dns.set_a(NAME, [a.host])
    cluster = await cluster_factory(**discovering(dns, f"dns://{NAME}:{a.port}"))
    await cluster.registry.add(b.host, b.port)
    dns.set_a(NAME, [a.host, b.host])  # DNS now also lists the hand-added node
    await discovery_of(cluster).resolve_once(force=True)
    node_b = cluster.registry.get(f"{b.host}:{b.port}")
    assert node_b is not None and node_b.discovered == ""
    dns.set_a(NAME, [a.host])
    await discovery_of(cluster).resolve_once(force=True)
    assert not cluster.registry.nodes()[1].draining


async def test_real_node_found_by_dns(
    dns: LoopbackDns, real_node_factory: Any, cluster_factory: ClusterFactory
) -> None:
    """The real NodeODM listens on every address, so 127.0.0.3 reaches it as a replica."""
    real = await real_node_factory(test_seconds=1, token="nodetok")
    dns.set_a(NAME, ["127.0.0.3"])
    cluster = await cluster_factory(**discovering(dns, f"dns://{NAME}:{real.port}?token=nodetok"))
    key = f"127.0.0.3:{real.port}"
    await eventually(
        lambda: (n := cluster.registry.get(key)) is not None and cluster.registry.is_online(n),
        message="real node online",
    )
    async with aiohttp.ClientSession() as s:
        uuid = await new_task(s, cluster.url, images=2)

        async def completed() -> bool:
            return bool((await info(s, cluster.url, uuid))["status"]["code"] == 40)

        await eventually(completed, timeout_s=30, message="task completed on the real node")
    assert real.images(uuid), "the real node received the images"


async def test_instances_on_one_redis_share_one_list(
    dns: LoopbackDns, replicas: list[SimNode], cluster_factory: ClusterFactory, store_url: str
) -> None:
    a, b, _ = replicas
    dns.set_a(NAME, [a.host])
    settings = discovering(dns, f"dns://{NAME}:{a.port}", store=store_url)
    first = await cluster_factory(**settings)
    second = await cluster_factory(**settings)
    assert keys(first) == [f"{a.host}:{a.port}"]
    await eventually(lambda: keys(second) == keys(first), message="second reads the list")
    dns.set_a(NAME, [a.host, b.host])
    both = sorted([f"{a.host}:{a.port}", f"{b.host}:{b.port}"])
    await eventually(lambda: sorted(keys(first)) == both, timeout_s=5)
    await eventually(lambda: sorted(keys(second)) == both, timeout_s=5)
    await AdminCommands(second.deps).node_update()  # a lookup on the instance that does not lead
    stored = await first.store.list_nodes()
    assert sorted(n.key for n in stored) == both, "one list, no duplicates"


async def test_admin_fronts_mark_refuse_and_update_at_once(
    dns: LoopbackDns, replicas: list[SimNode], cluster_factory: ClusterFactory
) -> None:
    a, b, _ = replicas
    dns.set_a(NAME, [a.host])
    slow = discovering(dns, f"dns://{NAME}:{a.port}", discovery_interval_s=3600.0)
    cluster = await cluster_factory(**slow)
    cmds = AdminCommands(cluster.deps)
    listing = await execute(cmds, "NODE LIST")
    assert listing[0].endswith("[D]") and listing[-1] == ""
    refused = await execute(cmds, "NODE DEL 1")
    assert refused[-1] == "FAIL" and f"dns://{NAME}:{a.port}" in refused[0]

    url = await serve_admin(cluster)
    async with aiohttp.ClientSession() as s:
        async with s.delete(f"{url}/r/node", json={"number": 1}) as r:
            assert r.status == 400
            assert "leaves when DNS stops listing it" in (await r.json())["error"]
        async with s.get(f"{url}/r/node/list") as r:
            (item,) = await r.json()
        assert item["discoveredBy"] == f"dns://{NAME}:{a.port}" and item["isDraining"] is False

    dns.set_a(NAME, [a.host, b.host])
    assert await execute(cmds, "NODE UPDATE") == ["OK"]  # no wait for the hour-long interval
    node_b = cluster.registry.get(f"{b.host}:{b.port}")
    assert node_b is not None and cluster.registry.is_online(node_b)


async def test_restart_keeps_discovered_nodes_and_dropping_the_flag_drains_them(
    dns: LoopbackDns, replicas: list[SimNode], cluster_factory: ClusterFactory, tmp_path: Any
) -> None:
    a, _, _ = replicas
    dns.set_a(NAME, [a.host])
    data = tmp_path / "state"
    first = await start_cluster(settings_for(data, **discovering(dns, f"dns://{NAME}:{a.port}")))
    try:
        assert keys(first) == [f"{a.host}:{a.port}"]
    finally:
        await first.stop()
    dns.stop()  # DNS down while the cluster starts again: the stored nodes stay
    again = await cluster_factory(data_dir=data, **discovering(dns, f"dns://{NAME}:{a.port}"))
    assert keys(again) == [f"{a.host}:{a.port}"]
    assert not again.registry.nodes()[0].draining
    await again.stop()
    without = await cluster_factory(data_dir=data, discovery_interval_s=INTERVAL_S)
    discovery_of(without).linger_s = 0.0
    await eventually(lambda: keys(without) == [], timeout_s=5, message="drained and gone")


async def test_admin_page_marks_discovered_nodes(
    browser: Any, dns: LoopbackDns, replicas: list[SimNode], cluster_factory: ClusterFactory
) -> None:
    a, b, _ = replicas
    dns.set_a(NAME, [a.host, b.host])
    slow = discovering(dns, f"dns://{NAME}:{a.port}", discovery_interval_s=3600.0)
    cluster = await cluster_factory(**slow)
    dns.set_a(NAME, [a.host])
    await discovery_of(cluster).resolve_once()  # b is gone from DNS: draining
    base = await serve_admin(cluster)
    page, problems = await open_page(browser, base, "")
    row_a = page.locator(f'#nodes tr[data-name="{a.host}:{a.port}"]')
    flag = row_a.locator(".pill.flag", has_text="D")
    await flag.wait_for()
    assert await flag.get_attribute("title") == f"Discovered by dns://{NAME}:{a.port}"
    draining = page.locator(f'#nodes tr[data-name="{b.host}:{b.port}"] .pill.flag')
    assert "draining" in (await draining.get_attribute("title") or "")
    assert problems == []


async def test_ipv6_addresses_and_unusable_records(
    dns: LoopbackDns,
    cluster_factory: ClusterFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An AAAA answer becomes a node in brackets; an SRV port 0 is refused, said once."""
    v6 = await start_simnode(SimNodeConfig(), "::1", 0)
    try:
        dns.set_a("six.test", ["::1"])
        dns.set_a("host.test", ["127.0.0.1"])
        dns.set_srv("_bad._tcp.test", [("host.test", 0)])
        caplog.set_level(logging.INFO, logger="clusterodm.nodes.discovery")
        cluster = await cluster_factory(
            **discovering(dns, f"dns://six.test:{v6.port}", "dns+srv://_bad._tcp.test")
        )
        key = f"[::1]:{v6.port}"
        assert keys(cluster) == [key]
        node = cluster.registry.get(key)
        assert node is not None and cluster.registry.is_online(node)
        for _ in range(3):
            await discovery_of(cluster).resolve_once(force=True)
        assert caplog.text.count("127.0.0.1:0 from dns+srv://_bad._tcp.test refused") == 1
    finally:
        await v6.stop()
