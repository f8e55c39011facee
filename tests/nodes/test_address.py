"""Node host names and ports: what becomes a node is exactly what a node URL can be built from."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from clusterodm.model import Node
from clusterodm.nodes.address import BadAddress, check_hostname, check_port
from clusterodm.numbers import BadNumber, parse_decimal

# the inputs that took the cluster down (#14, #16), and their relatives
BAD_HOSTS = [
    "a\\b",
    "[",
    "]",
    "%",
    "[::1",
    "a]b",
    "127.0.0.1:1",
    "a\u0085b",
    "",
    "x" * 300,
    ("a" * 63 + ".") * 4 + "a",  # 257 characters
    "a" * 64,
    "::1",
    "[fe80::1%eth0]",
    "[::1]:3000",
    "999.1.1.1",
    "01.2.3.4",
    "1.2.3",
    "-node",
    "node-",
    "a..b",
    ".",
    "é.example",
    "host name",
    "host/x",
    "host?x",
    "host#x",
    "user@host",
    "host\n",
    "\x00",
]
GOOD_HOSTS = {
    "localhost": "localhost",
    "127.0.0.1": "127.0.0.1",
    "node-1.example.org": "node-1.example.org",
    "node_1": "node_1",
    "nodeodm.": "nodeodm.",
    "[::1]": "[::1]",
    "[0:0::1]": "[::1]",
    "[2001:DB8::1]": "[2001:db8::1]",
    "a" * 63: "a" * 63,
}


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_bad_hosts_are_refused_with_a_reason(host: str) -> None:
    with pytest.raises(BadAddress) as e:
        check_hostname(host)
    assert e.value.message and len(e.value.message) < 200


@pytest.mark.parametrize(("host", "stored"), GOOD_HOSTS.items())
def test_good_hosts_are_kept(host: str, stored: str) -> None:
    assert check_hostname(host) == stored


def _url_host(hostname: str) -> str | None:
    return URL(Node(hostname, 3000).base_url + "/info").host


def _refused_or_usable(host: str) -> None:
    """Never an exception other than BadAddress; what passes builds a URL whose host is it."""
    try:
        stored = check_hostname(host)
    except BadAddress:
        return
    assert _url_host(stored) in (stored.lower(), stored.strip("[]").lower())


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_is_refused_or_makes_a_usable_url(host: str) -> None:
    _refused_or_usable(host)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="aZ1.-_[]:%\\/@ \t", max_size=30))
def test_address_punctuation_is_refused_or_usable(host: str) -> None:
    _refused_or_usable(host)


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(v=4))
def test_every_ipv4_address_is_accepted(address: ipaddress.IPv4Address) -> None:
    assert check_hostname(str(address)) == str(address)


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(v=6))
def test_every_bracketed_ipv6_address_is_accepted(address: ipaddress.IPv6Address) -> None:
    stored = check_hostname(f"[{address}]")
    assert ipaddress.IPv6Address(stored[1:-1]) == address
    assert URL(Node(stored, 3000).base_url).port == 3000


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9](\.[a-z][a-z0-9]{0,10}){0,3}", fullmatch=True))
def test_dns_names_are_accepted(name: str) -> None:
    assert check_hostname(name) == name
    assert _url_host(name) == name


@pytest.mark.parametrize(
    "port",
    [
        "0",
        "65536",
        "-1",
        "+80",
        " 80",
        "80 ",
        "8_0",
        "²",
        "①",
        "٣",
        "1" * 5000,
        "",
        "0x50",
        0,
        70000,
        True,
    ],
)
def test_bad_ports(port: str | int) -> None:
    with pytest.raises(BadAddress):
        check_port(port)


def test_good_ports() -> None:
    assert check_port("1") == 1 and check_port("65535") == 65535 and check_port(3000) == 3000
    assert check_port("03000") == 3000


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_numbers_parse_strictly(text: str) -> None:
    """ASCII digits only, at most 9; anything else is BadNumber, never another error."""
    try:
        number = parse_decimal(text)
    except BadNumber:
        assert not (text.isascii() and text.isdigit() and len(text) <= 9)
        return
    assert text.isascii() and text.isdigit() and number == int(text)


@pytest.mark.parametrize("text", ["²", "①", "٣", "1" * 5000, "-1", "+1", "1_0", " 1", "1.0", ""])
def test_hostile_numbers(text: str) -> None:
    with pytest.raises(BadNumber):
        parse_decimal(text)


def test_autoscaled_machine_addresses() -> None:
    """A provider's address becomes a node host as any other does; IPv6 gets its brackets."""
    from clusterodm.autoscale.autoscaler import _node_host
    from clusterodm.errors import CloudError

    assert _node_host("203.0.113.7", "m") == "203.0.113.7"
    assert _node_host("2001:db8::5", "m") == "[2001:db8::5]"
    assert _node_host("node-1.internal", "m") == "node-1.internal"
    for bad in ("a\\b", "1.2.3.4:80", "[::1", "fe80::1%eth0", "x" * 300):
        with pytest.raises(CloudError):
            _node_host(bad, "m")
