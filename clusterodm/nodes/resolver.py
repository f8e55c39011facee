"""DnsResolver: what a ``--nodes-from`` source lists right now, asked of DNS.

The adapter between discovery and dnspython's async resolver; dnspython's errors end here:
an answer that says "no such name" or "no such record" is an empty list, anything else (a
timeout, SERVFAIL, an unreachable server, a garbled answer) is ``LookupFailed``, so discovery can
tell "nobody is there" from "we could not ask". Each lookup is bounded by one lifetime.

``server`` points every lookup at one server (``--dns-server``: Consul's DNS on 8600, a test
server on loopback); without it the system's resolver configuration and search list are used,
so a short name (``nodeodm``) resolves as it does for other programs in the same container.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

from clusterodm.config import DiscoverySource

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
MAX_ADDRESSES = 1000
"""Addresses taken from one source's answer; a bigger answer is cut (and logged)."""


class LookupFailed(Exception):
    """DNS could not be asked, or did not answer usably: keep what it said last."""


@dataclass(frozen=True, slots=True, order=True)
class Found:
    """One node a source lists: an address (IPv4 or IPv6) and a port."""

    host: str
    port: int

    @property
    def hostname(self) -> str:
        """As a node's host name: an IPv6 address in brackets (``nodes/address.py``)."""
        return f"[{self.host}]" if ":" in self.host else self.host


class DnsResolver:
    """A/AAAA and SRV lookups, each bounded by ``timeout_s`` in all."""

    def __init__(
        self, server: tuple[str, int] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.server = server
        self.timeout_s = timeout_s
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _get(self) -> dns.asyncresolver.Resolver:
        """Built on first use: reading the system configuration can fail, and a failure here
        is one failed lookup, not a cluster that does not start."""
        if self._resolver is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=self.server is None)
            except dns.exception.DNSException as e:
                raise LookupFailed(f"no DNS configuration: {e}") from e
            if self.server is not None:
                resolver.nameservers = [self.server[0]]
                resolver.port = self.server[1]
            resolver.cache = None  # every round asks again: TTLs of 0 are common here
            resolver.timeout = resolver.lifetime = self.timeout_s
            self._resolver = resolver
        return self._resolver

    async def lookup(self, source: DiscoverySource) -> list[Found]:
        """Every node ``source`` lists now, sorted; [] if the name or records do not exist."""
        if source.kind == "dns+srv":
            found = await self._services(source.name)
        else:
            assert source.port is not None
            found = [Found(a, source.port) for a in await self.addresses(source.name)]
        unique = sorted(set(found))
        if len(unique) > MAX_ADDRESSES:
            log.warning("%s lists %d nodes; taking %d", source.label, len(unique), MAX_ADDRESSES)
            unique = unique[:MAX_ADDRESSES]
        return unique

    async def addresses(self, name: str) -> list[str]:
        """A and AAAA records of ``name``, asked together."""
        a, aaaa = await asyncio.gather(self._query(name, "A"), self._query(name, "AAAA"))
        return [_address(rdata) for rdata in [*a, *aaaa] if _address(rdata)]

    async def _services(self, name: str) -> list[Found]:
        """SRV records of ``name``; each target's address from the answer's additional
        section when the server sent it (Consul, Kubernetes do), else asked for."""
        answer = await self._answer(name, "SRV")
        if answer is None:
            return []
        extra = _additional(answer.response)
        targets: dict[str, list[int]] = {}
        for rdata in answer:
            if rdata.target == dns.name.root:  # "service decidedly not available here"
                continue
            targets.setdefault(rdata.target.to_text(), []).append(int(rdata.port))
        found: list[Found] = []
        missing = [t for t in targets if t not in extra]
        asked = await asyncio.gather(*(self.addresses(t) for t in missing))
        extra.update(zip(missing, asked, strict=True))
        for target, ports in targets.items():
            found.extend(Found(a, p) for a in extra[target] for p in ports)
        return found

    async def _query(self, name: str, rdtype: str) -> list[object]:
        answer = await self._answer(name, rdtype)
        return [] if answer is None else list(answer)

    async def _answer(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        resolver = self._get()
        try:
            return await resolver.resolve(name, rdtype, search=self.server is None)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.DNSException as e:
            raise LookupFailed(f"{rdtype} {name}: {e}") from e
        except (OSError, ValueError) as e:  # a socket error, a malformed name
            raise LookupFailed(f"{rdtype} {name}: {e}") from e


def _address(rdata: object) -> str:
    """The address of an A/AAAA record, checked to be one ('' if not)."""
    text = str(getattr(rdata, "address", ""))
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return ""


def _additional(response: dns.message.Message) -> dict[str, list[str]]:
    """A and AAAA records a server sent along with an SRV answer, by name."""
    out: dict[str, list[str]] = {}
    for rrset in response.additional:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            found = [a for a in (_address(r) for r in rrset) if a]
            out.setdefault(rrset.name.to_text(), []).extend(found)
    return out
