"""The lean ``GET /info`` front answers exactly as aiohttp and the middleware do: the same raw
requests sent to a cluster with the front and to one without it get the same answers (all but
the Date header), the same metrics, the same refusals; everything else is aiohttp's."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.streams import EMPTY_PAYLOAD
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from clusterodm.app import Cluster
from clusterodm.proxy import front
from tests.conftest import ClusterFactory, SimnodeFactory
from tests.helpers import write_atomically as write

pytestmark = pytest.mark.timeout(60)

ALICE = "alice-1b7e93c0d2f4a586"
BOB = "bob-2c6d81e0a9f3b475"

USERS = f"""
[[user]]
name = "alice"
token_sha256 = "{hashlib.sha256(ALICE.encode()).hexdigest()}"
max_images = 10
max_concurrent_tasks = 1

[[user]]
name = "bob"
token = "{BOB}"
"""


def get(target: str, *headers: str, version: str = "1.1", method: str = "GET") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


H = "Host: cluster"
REQUESTS: dict[str, bytes] = {
    "plain": get(f"/info?token={ALICE}", H),
    "other user": get(f"/info?token={BOB}", H),
    "origin": get(f"/info?token={ALICE}", H, "Origin: http://app.example"),
    "empty origin": get(f"/info?token={ALICE}", H, "Origin:"),
    "two origins": get(f"/info?token={ALICE}", H, "Origin: http://a", "Origin: http://b"),
    "no token": get("/info", H),
    "empty token": get("/info?token=", H),
    "wrong token": get("/info?token=nope", H, "Origin: http://app.example"),
    "more query": get(f"/info?token={ALICE}&x=1", H),
    "encoded token": get("/info?token=" + "".join(f"%{b:02X}" for b in ALICE.encode()), H),
    "plus in token": get(f"/info?token={ALICE}+", H),
    "trailing slash": get(f"/info/?token={ALICE}", H),
    "HEAD": get(f"/info?token={ALICE}", H, method="HEAD"),
    "POST": get(f"/info?token={ALICE}", H, "Content-Length: 0", method="POST"),
    "HTTP/1.0": get(f"/info?token={ALICE}", H, version="1.0"),
    "connection close": get(f"/info?token={ALICE}", H, "Connection: close"),
    "keep-alive": get(f"/info?token={ALICE}", H, "Connection: Keep-Alive"),
    "keep-alive and more": get(f"/info?token={ALICE}", H, "Connection: keep-alive, Upgrade"),
    "as python-requests sends it": get(
        f"/info?token={ALICE}",
        H,
        "User-Agent: python-requests/2.31.0",
        "Accept-Encoding: gzip, deflate",
        "Accept: */*",
        "Connection: keep-alive",
    ),
    "content-length 0": get(f"/info?token={ALICE}", H, "Content-Length: 0"),
    "no host": get(f"/info?token={ALICE}"),
    "non-ascii header": get(f"/info?token={ALICE}", H).replace(
        b"\r\n\r\n", b"\r\nX: \xc3\xa9\r\n\r\n"
    ),
    "preflight": get(
        "/info",
        H,
        "Origin: http://app.example",
        "Access-Control-Request-Method: GET",
        method="OPTIONS",
    ),
    "two hosts": get(f"/info?token={ALICE}", H, "Host: other"),
    "empty host": get(f"/info?token={ALICE}", "Host:"),
    "odd host": get(f"/info?token={ALICE}", "Host: a b/c"),
    "repeated header": get(f"/info?token={ALICE}", H, "Accept: a", "Accept: b"),
    "long header": get(f"/info?token={ALICE}", H, "X-Long: " + "a" * 9000),
    "many headers": get(f"/info?token={ALICE}", H, *(f"X-{i}: {i}" for i in range(200))),
    "space before colon": get(f"/info?token={ALICE}", H, "Origin : http://app.example"),
    "options": get(f"/options?token={ALICE}", H),
    "task list": get(f"/task/list?token={BOB}", H),
}

ANSWERED_BY_THE_FRONT = {
    "plain",
    "other user",
    "origin",
    "empty origin",
    "keep-alive",
    "as python-requests sends it",
}


async def read_answer(reader: asyncio.StreamReader, method: bytes = b"GET") -> tuple[bytes, ...]:
    """(status line, headers but Date in order, body) of one answer."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head[:-4].split(b"\r\n")
    headers = [h for h in lines[1:] if not h.lower().startswith(b"date:")]
    length = next(
        (int(h.split(b":")[1]) for h in headers if h.lower().startswith(b"content-length:")), 0
    )
    body = b"" if method == b"HEAD" else await asyncio.wait_for(reader.readexactly(length), 10)
    return (lines[0], *headers, body)


async def ask(cluster: Cluster, raw: bytes) -> tuple[bytes, ...]:
    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.port)
    try:
        writer.write(raw)
        return await read_answer(reader, raw.split(b" ", 1)[0])
    finally:
        writer.close()


def metrics(cluster: Cluster) -> list[bytes]:
    """The request and byte counters, as ``/metrics`` shows them."""
    text = generate_latest(cluster.metrics.registry)
    keep = (b"clusterodm_requests_total{", b"clusterodm_bytes_sent_total")
    return sorted(line for line in text.split(b"\n") if line.startswith(keep))


async def two_clusters(
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    token: str | None = None,
) -> tuple[Cluster, Cluster]:
    """A cluster with the front and one without, same access rules: the users file, or
    ``token`` (the single ``--token``)."""
    users = tmp_path / "users.toml"
    write(users, USERS)
    access = {"users_file": str(users)} if token is None else {"token": token}
    sim = await simnode_factory()
    with_front = await cluster_factory([sim], **access)
    monkeypatch.setenv("CLUSTERODM_FRONT", "off")
    without = await cluster_factory([sim], **access)
    monkeypatch.delenv("CLUSTERODM_FRONT")
    assert isinstance(with_front.sites["proxy"], front.FrontSite)
    assert not isinstance(without.sites["proxy"], front.FrontSite)
    return with_front, without


async def test_every_request_gets_the_answer_aiohttp_gives(
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast, slow = await two_clusters(simnode_factory, cluster_factory, tmp_path, monkeypatch)
    site = fast.sites["proxy"]
    assert isinstance(site, front.FrontSite)
    for name, raw in REQUESTS.items():
        before = site.answered
        got, expected = await ask(fast, raw), await ask(slow, raw)
        assert got == expected, name
        answered = site.answered - before
        assert answered == 1 or name not in ANSWERED_BY_THE_FRONT, name
        assert answered == 0 or expected[0] == b"HTTP/1.1 200 OK", name
    # the same requests counted the same way
    assert metrics(fast) == metrics(slow)
    assert any(b'route="/info",status="200"' in line for line in metrics(fast))
    plain = await ask(fast, REQUESTS["plain"])
    assert plain[0] == b"HTTP/1.1 200 OK" and b'"maxImages": 10' in plain[-1]
    assert (await ask(fast, REQUESTS["no token"]))[0].startswith(b"HTTP/1.1 401")


async def test_the_single_token_is_checked_as_aiohttp_checks_it(
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast, slow = await two_clusters(
        simnode_factory, cluster_factory, tmp_path, monkeypatch, token="s3cret"
    )
    site = fast.sites["proxy"]
    assert isinstance(site, front.FrontSite)
    for target in ("/info?token=s3cret", "/info?token=S3CRET", "/info", "/info?token=s3cre"):
        got = await ask(fast, get(target, H, "Origin: http://x"))
        assert got == await ask(slow, get(target, H, "Origin: http://x")), target
    assert site.answered == 1
    assert metrics(fast) == metrics(slow)


async def test_refused_addresses_and_kept_connections_behave_as_aiohttp(
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fast, slow = await two_clusters(simnode_factory, cluster_factory, tmp_path, monkeypatch)
    # one keep-alive connection: answered by the front, then aiohttp's from the first other
    # request on, and two pipelined requests in one write
    answers = []
    for cluster in (fast, slow):
        reader, writer = await asyncio.open_connection("127.0.0.1", cluster.port)
        seen = []
        for raw in (REQUESTS["plain"], REQUESTS["plain"], REQUESTS["task list"], REQUESTS["plain"]):
            writer.write(raw)
            seen.append(await read_answer(reader))
        writer.write(REQUESTS["plain"] + REQUESTS["origin"])
        seen += [await read_answer(reader), await read_answer(reader)]
        writer.close()
        answers.append(seen)
    assert answers[0] == answers[1]
    site = fast.sites["proxy"]
    assert isinstance(site, front.FrontSite) and site.answered == 2, "then aiohttp's"
    assert [a[0] for a in answers[0]] == [b"HTTP/1.1 200 OK"] * 6
    # the failed-token guard: ten wrong tokens, then even the right one is refused (429)
    for cluster in (fast, slow):
        for _ in range(10):
            assert (await ask(cluster, REQUESTS["wrong token"]))[0].startswith(b"HTTP/1.1 401")
    refused = await ask(fast, REQUESTS["plain"])
    assert refused == await ask(slow, REQUESTS["plain"])
    assert refused[0].startswith(b"HTTP/1.1 429")


async def test_idle_connections_are_closed_and_so_are_all_at_stop(
    simnode_factory: SimnodeFactory,
    cluster_factory: ClusterFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(front, "KEEPALIVE_S", 0.3)
    monkeypatch.setattr(front, "SWEEP_S", 0.1)
    cluster = await cluster_factory([await simnode_factory()])
    site = cluster.sites["proxy"]
    assert isinstance(site, front.FrontSite)
    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.port)
    writer.write(get("/info", H))
    assert (await read_answer(reader))[0] == b"HTTP/1.1 200 OK"
    assert await asyncio.wait_for(reader.read(), 5) == b"", "closed once idle"
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.port)
    writer.write(get("/info", H))
    assert (await read_answer(reader))[0] == b"HTTP/1.1 200 OK"
    monkeypatch.setattr(front, "KEEPALIVE_S", 60.0)
    await cluster.stop()
    assert await asyncio.wait_for(reader.read(), 5) == b"", "closed at stop"
    writer.close()


_PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
_UNRESERVED = st.text("abcXYZ019._~-", max_size=12)
# mostly requests the front may answer, so that the property is tried on them
_TARGETS = st.one_of(
    _UNRESERVED.map(lambda t: "/info?token=" + t),
    st.just("/info"),
    _PRINTABLE.map(lambda t: "/info?token=" + t),
    st.sampled_from(["/info/", "/Info", "/info?", "/info?x=1", "/info?token=a&token=b"]),
)
_GOOD_NAMES = st.sampled_from(["Origin", "origin", "Accept", "User-Agent", "X-A"])
_NAMES = st.one_of(
    _GOOD_NAMES,
    _GOOD_NAMES,
    st.sampled_from(["Host", "Content-Length", "Connection", "Transfer-Encoding"]),
    _PRINTABLE,
)
_BYTES = st.binary(max_size=6).map(lambda b: b.decode("latin-1"))
_VALUES = st.one_of(_PRINTABLE, _PRINTABLE, _BYTES)
_COLONS = st.sampled_from([": ", ": ", ":", " :", ""])


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "GET", "GET", "HEAD", "get"]),
    target=_TARGETS,
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
    headers=st.lists(st.tuples(_NAMES, _COLONS, _VALUES), max_size=4),
    with_host=st.sampled_from([True, True, True, False]),
    after=st.sampled_from([b"", b"", b"", b"x", b"GET /info HTTP/1.1\r\nHost: a\r\n\r\n"]),
)
def test_what_the_front_answers_aiohttp_reads_as_one_plain_get_info(
    method: str,
    target: str,
    version: str,
    headers: list[tuple[str, str, str]],
    with_host: bool,
    after: bytes,
) -> None:
    """Whatever head the front answers, aiohttp's own parser reads it as exactly one
    ``GET /info`` HTTP/1.1 without a body, with the same token and Origin the front used."""
    lines = [f"{method} {target} {version}"]
    lines += ["Host: cluster"] if with_host else []
    lines += [f"{name}{colon}{value}" for name, colon, value in headers]
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + after
    tokens: list[str] = []

    def answer(token: str, ip: str) -> bytes:
        tokens.append(token)
        return b"{}"

    made = front._Front(asyncio.Protocol, answer).respond(data, "127.0.0.1")
    if made is None:
        return
    message, payload = one_request(data)
    assert (message.method, message.path.split("?")[0], message.version) == ("GET", "/info", (1, 1))
    assert payload is EMPTY_PAYLOAD
    assert tokens == [message.url.query.get("token", "")]
    origin = message.headers.get("Origin")
    if origin:
        assert b"\r\nAccess-Control-Allow-Origin: " + origin.encode() + b"\r\n" in made
    else:
        assert b"\r\nAccess-Control-Allow-Origin: *\r\n" in made


def one_request(data: bytes) -> tuple[RawRequestMessage, Any]:
    """The one request aiohttp's own parser reads in ``data`` (nothing before or after it)."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(BaseProtocol(loop), loop, 2**16)
        messages, upgraded, tail = parser.feed_data(data)
    finally:
        loop.close()
    assert len(messages) == 1 and not upgraded and not tail
    return messages[0]


async def test_tls_sites_and_a_turned_off_front_are_aiohttp_s_own() -> None:
    runner = web.AppRunner(web.Application())
    await runner.setup()
    try:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        made = front.site(runner, "127.0.0.1", 0, backlog=8, ssl_context=tls, answer=_no)
        assert type(made) is web.TCPSite
        assert type(front.site(runner, "127.0.0.1", 0, backlog=8)) is web.TCPSite
        made = front.site(runner, "127.0.0.1", 0, backlog=8, answer=_no)
        assert isinstance(made, front.FrontSite)
    finally:
        await runner.cleanup()


def _no(token: str, ip: str) -> None:
    return None
