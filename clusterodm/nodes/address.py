"""Node addresses: the one check every host name and port passes before it becomes a node.

A node's URL is built from its host name, so a host that is not a plain address (``a\\b``,
``[``, ``%``, ``127.0.0.1:1``, control characters) makes the URL library raise in the middle of
a health round or a dispatch. The admin CLI, the admin web page, the nodes.json import and the
autoscaler all call ``check_hostname`` / ``check_port``, so such a host never gets in.

Accepted, as the original's users write them:

- a DNS name: dot-separated labels of ASCII letters, digits, ``-`` and ``_`` (container names
  in Docker networks use it), 1-63 characters each, not starting or ending with ``-``, 253 in
  all, an optional final dot; a name whose last label is all digits must be an IPv4 address;
- an IPv4 address in dotted decimal (``127.0.0.1``; no leading zeros, no shorthand);
- an IPv6 address in brackets (``[::1]``), kept in its compressed form; no zone (``%eth0``).

Imports ``numbers`` and the error families only.
"""

from __future__ import annotations

import ipaddress
import re

from clusterodm.errors import InvalidRequest
from clusterodm.numbers import BadNumber, parse_decimal

MAX_HOSTNAME = 253
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+")
_IPV6_TEXT = re.compile(r"[0-9A-Fa-f:.]+")

EXPECTED = "a DNS name, an IPv4 address or an IPv6 address in brackets"


class BadAddress(InvalidRequest):
    """A host name or port that cannot be a node's (the admin fronts print the message)."""


def check_hostname(hostname: str) -> str:
    """The host name to store for ``hostname``, or BadAddress saying why not."""
    if not isinstance(hostname, str):
        raise BadAddress(f"Hostname must be {EXPECTED}")
    shown = repr(hostname[:80])
    if not hostname:
        raise BadAddress(f"Hostname is empty; expected {EXPECTED}")
    if len(hostname) > MAX_HOSTNAME + 2:
        raise BadAddress(f"Hostname is longer than {MAX_HOSTNAME} characters")
    if hostname.startswith("["):
        return _bracketed_ipv6(hostname, shown)
    name = hostname[:-1] if hostname.endswith(".") else hostname
    if not name or len(name) > MAX_HOSTNAME:
        raise BadAddress(f"Invalid hostname {shown}: expected {EXPECTED}")
    if ":" in name:
        raise BadAddress(
            f"Invalid hostname {shown}: give the port separately, and an IPv6 address in"
            " brackets ([::1])"
        )
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise BadAddress(f"Invalid hostname {shown}: expected {EXPECTED}")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            raise BadAddress(f"Invalid IPv4 address {shown}") from None
        return name
    return hostname


def _bracketed_ipv6(hostname: str, shown: str) -> str:
    inner = hostname[1:-1] if hostname.endswith("]") else None
    if not inner or not _IPV6_TEXT.fullmatch(inner):
        raise BadAddress(f"Invalid IPv6 address {shown}: expected it in brackets, as [::1]")
    try:
        address = ipaddress.IPv6Address(inner)
    except ValueError:
        raise BadAddress(f"Invalid IPv6 address {shown}") from None
    return f"[{address.compressed}]"


def check_port(port: int | str) -> int:
    """A TCP port 1-65535 from an int (JSON, stored records) or ASCII digits (CLI, forms)."""
    if isinstance(port, bool):
        raise BadAddress("Port must be a number from 1 to 65535")
    if isinstance(port, int):
        if 1 <= port <= 65535:
            return port
        raise BadAddress("Port must be a number from 1 to 65535")
    try:
        return parse_decimal(port, "port", minimum=1, maximum=65535, max_digits=5)
    except BadNumber:
        raise BadAddress("Port must be a number from 1 to 65535") from None
