"""A real DNS server on 127.0.0.1 for discovery tests (dnslib, UDP, a free port).

The zone is a plain dict a test changes while the server runs: ``set_a("nodeodm.test", [...])``,
``set_srv("_nodeodm._tcp.test", [(target, port), ...])``. ``servfail = True`` makes every answer a
SERVFAIL (a server that is up but broken); ``stop()`` takes it away altogether.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

TTL = 0


def _fqdn(name: str) -> str:
    return name.lower().rstrip(".") + "."


class Zone(BaseResolver):  # type: ignore[misc]
    """Answers from ``records``: name -> qtype name -> list of rdata."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, list[Any]]] = {}
        self.servfail = False
        self.failing: set[str] = set()  # names answered with SERVFAIL
        self.queries = 0
        self._lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        with self._lock:
            self.queries += 1
            name = _fqdn(str(request.q.qname))
            if self.servfail or name in self.failing:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            qtype = QTYPE[request.q.qtype]
            by_type = self.records.get(name)
            if by_type is None:
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            for rdata in by_type.get(qtype, []):
                reply.add_answer(RR(name, request.q.qtype, rdata=rdata, ttl=TTL))
            for extra_name, extra in by_type.get("additional", []):
                reply.add_ar(RR(extra_name, QTYPE.A, rdata=extra, ttl=TTL))
        return reply


def _silent(text: str) -> None:
    pass


class LoopbackDns:
    """One dnslib server on 127.0.0.1:<free port>, serving a :class:`Zone` from a thread."""

    def __init__(self) -> None:
        self.zone = Zone()
        quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", logf=_silent)
        self._server = DNSServer(self.zone, address="127.0.0.1", port=0, logger=quiet)
        self.port: int = self._server.server.server_address[1]
        self._server.start_thread()
        self.running = True

    @property
    def address(self) -> str:
        """As ``--dns-server`` takes it."""
        return f"127.0.0.1:{self.port}"

    def set_a(self, name: str, addresses: list[str]) -> None:
        """The A and AAAA records of ``name`` (an empty list: the name exists, no address)."""
        a = [A(x) for x in addresses if ipaddress.ip_address(x).version == 4]
        aaaa = [AAAA(x) for x in addresses if ipaddress.ip_address(x).version == 6]
        with self.zone._lock:
            self.zone.records[_fqdn(name)] = {"A": a, "AAAA": aaaa}

    def set_srv(
        self, name: str, targets: list[tuple[str, int]], glue: dict[str, str] | None = None
    ) -> None:
        """SRV records of ``name``; ``glue`` (target -> IPv4) goes in the additional section,
        as Consul and Kubernetes send it."""
        srv = [SRV(priority=10, weight=10, port=port, target=_fqdn(t)) for t, port in targets]
        extra = [(_fqdn(t), A(ip)) for t, ip in (glue or {}).items()]
        with self.zone._lock:
            self.zone.records[_fqdn(name)] = {"SRV": srv, "additional": extra}

    def fail(self, name: str, failing: bool = True) -> None:
        with self.zone._lock:
            (self.zone.failing.add if failing else self.zone.failing.discard)(_fqdn(name))

    def remove(self, name: str) -> None:
        with self.zone._lock:
            self.zone.records.pop(_fqdn(name), None)

    def stop(self) -> None:
        if self.running:
            self.running = False
            with contextlib.suppress(Exception):
                self._server.stop()
            self._server.server.server_close()
