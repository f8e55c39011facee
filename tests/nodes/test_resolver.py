"""DnsResolver against a real DNS server on loopback (dnslib): A/AAAA, SRV with and without
the additional section, and failures told apart from absent names."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from clusterodm.config import DiscoverySource
from clusterodm.nodes.resolver import DnsResolver, Found, LookupFailed

if TYPE_CHECKING:
    from tests.dns_server import LoopbackDns

NAME = "nodeodm.test"


async def test_resolver_reads_a_aaaa_and_srv(dns: LoopbackDns) -> None:
    dns.set_a(NAME, ["127.0.0.3", "127.0.0.2", "::1"])
    dns.set_a("n1.test", ["127.0.0.1"])
    dns.set_srv("_nodeodm._tcp.test", [("n1.test", 3001), ("n1.test", 3002), (".", 9)])
    resolver = DnsResolver(("127.0.0.1", dns.port), timeout_s=0.5)
    found = await resolver.lookup(DiscoverySource.parse(f"dns://{NAME}:3000"))
    assert found == [Found("127.0.0.2", 3000), Found("127.0.0.3", 3000), Found("::1", 3000)]
    srv = await resolver.lookup(DiscoverySource.parse("dns+srv://_nodeodm._tcp.test"))
    assert srv == [Found("127.0.0.1", 3001), Found("127.0.0.1", 3002)]
    assert await resolver.lookup(DiscoverySource.parse("dns://absent.test:3000")) == []
    # Consul's way: the targets' addresses in the additional section, no A records to ask
    dns.set_srv("_glued._tcp.test", [("pod-a.test", 3000)], glue={"pod-a.test": "127.0.0.5"})
    before = dns.zone.queries
    glued = await resolver.lookup(DiscoverySource.parse("dns+srv://_glued._tcp.test"))
    assert glued == [Found("127.0.0.5", 3000)]
    assert dns.zone.queries == before + 1, "no second question for a glued target"


async def test_resolver_tells_failure_from_absence(dns: LoopbackDns) -> None:
    dns.set_a(NAME, ["127.0.0.2"])
    resolver = DnsResolver(("127.0.0.1", dns.port), timeout_s=0.5)
    source = DiscoverySource.parse(f"dns://{NAME}:3000")
    dns.fail(NAME)
    with pytest.raises(LookupFailed):
        await resolver.lookup(source)
    dns.stop()
    with pytest.raises(LookupFailed):
        await resolver.lookup(source)
