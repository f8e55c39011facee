"""PollClient against real sockets on loopback: a scripted raw HTTP node for the edge cases,
simnode for the real thing."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from clusterodm.errors import NodeUnreachable
from clusterodm.model import Node
from clusterodm.nodes.polls import AnswerTooLarge, PollClient, PoolLimits
from tests.conftest import SimnodeFactory
from tests.helpers import eventually

#: (connection number, request number on it, request head) -> what to send (bytes, or pieces
#: with pauses in seconds between them, CLOSE closing the connection); None closes the
#: connection without answering
Script = Callable[[int, int, bytes], Awaitable[bytes | list[bytes | float] | None]]

pytestmark = pytest.mark.timeout(30)
CLOSE = b""


def answer(body: bytes, *headers: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class RawNode:
    """A node speaking HTTP/1.1 from a script, one request at a time per connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def node(self) -> Node:
        assert self.server is not None
        return Node("127.0.0.1", self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    def close_connections(self) -> None:
        for writer in self.writers:
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        self.close_connections()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        self.writers.add(writer)
        try:
            for index in range(1000):
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                reply = await self.script(number, index, head)
                if reply is None:
                    break
                for piece in [reply] if isinstance(reply, bytes) else reply:
                    if piece == CLOSE:
                        return
                    if isinstance(piece, float):
                        await asyncio.sleep(piece)  # a slow node, not synchronisation
                    else:
                        writer.write(piece)
                        await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


@pytest.fixture
async def raw_node() -> AsyncIterator[Callable[[Script], Awaitable[RawNode]]]:
    started: list[RawNode] = []

    async def make(script: Script) -> RawNode:
        node = RawNode(script)
        await node.start()
        started.append(node)
        return node

    yield make
    for node in started:
        await node.stop()


@pytest.fixture
async def polls() -> AsyncIterator[PollClient]:
    client = PollClient(connect_s=2, read_timeout_s=2)
    yield client
    await client.close()


async def test_simnode_answers_on_one_kept_alive_connection(
    simnode_factory: SimnodeFactory, polls: PollClient
) -> None:
    sim = await simnode_factory(token="nodesecret")
    node = Node(sim.host, sim.port, "nodesecret")
    for _ in range(5):
        got = await polls.get(node, "/info?token=nodesecret")
        assert got.status == 200
        assert b'"version"' in got.body
        assert ("Content-Type", "application/json; charset=utf-8") in got.headers
    assert polls.connections(node) == 1
    wrong = await polls.get(node, "/info?token=wrong")
    assert wrong.status == 200 and b"error" in wrong.body


async def test_request_carries_target_host_and_headers(
    raw_node: Callable[[Script], Awaitable[RawNode]], polls: PollClient
) -> None:
    async def script(conn: int, index: int, head: bytes) -> bytes:
        return answer(b"{}")

    raw = await raw_node(script)
    await polls.get(raw.node, "/task/abc/info?with_output=2&token=t", [("if-none-match", 'W/"1"')])
    lines = raw.requests[0].decode().split("\r\n")
    assert lines[0] == "GET /task/abc/info?with_output=2&token=t HTTP/1.1"
    assert f"Host: 127.0.0.1:{raw.node.port}" in lines
    assert 'if-none-match: W/"1"' in lines
    assert "Accept: */*" in lines
    with pytest.raises(ValueError):
        await polls.get(raw.node, "/x", [("accept", "a\r\nInjected: 1")])


async def test_connection_closed_by_node_between_requests_is_retried_once(
    raw_node: Callable[[Script], Awaitable[RawNode]], polls: PollClient
) -> None:
    async def script(conn: int, index: int, head: bytes) -> bytes | None:
        # each connection answers once, then drops the next request unanswered (keep-alive race)
        return answer(f"conn {conn}".encode()) if index == 0 else None

    raw = await raw_node(script)
    assert (await polls.get(raw.node, "/a")).body == b"conn 0"
    assert (await polls.get(raw.node, "/b")).body == b"conn 1", "sent again on a new connection"
    assert raw.connections == 2
    assert [r.split(b" ")[1] for r in raw.requests] == [b"/a", b"/b", b"/b"]


async def test_retry_takes_a_new_connection_not_another_idle_one(
    raw_node: Callable[[Script], Awaitable[RawNode]], polls: PollClient
) -> None:
    both_asked = asyncio.Event()

    async def script(conn: int, index: int, head: bytes) -> bytes | None:
        if index > 0:
            return None  # every kept-alive connection went stale
        if conn < 2:
            if len(raw.requests) == 2:
                both_asked.set()
            await both_asked.wait()  # two requests at once: two idle connections afterwards
        return answer(f"conn {conn}".encode())

    raw = await raw_node(script)
    first = await asyncio.gather(polls.get(raw.node, "/a"), polls.get(raw.node, "/b"))
    assert sorted(a.body for a in first) == [b"conn 0", b"conn 1"]
    assert polls.connections(raw.node) == 2
    assert (await polls.get(raw.node, "/c")).body == b"conn 2"
    assert raw.connections == 3, "one stale connection tried, then a new one"


async def test_fresh_connection_closed_unanswered_is_not_retried(
    raw_node: Callable[[Script], Awaitable[RawNode]], polls: PollClient
) -> None:
    async def script(conn: int, index: int, head: bytes) -> None:
        return None

    raw = await raw_node(script)
    with pytest.raises(NodeUnreachable) as info:
        await polls.get(raw.node, "/a")
    assert str(info.value) == f"Node {raw.node.key} is not reachable (Server disconnected)"
    assert raw.connections == 1
    assert polls.connections(raw.node) == 0


async def test_idle_connection_closed_by_node_leaves_the_pool(
    raw_node: Callable[[Script], Awaitable[RawNode]], polls: PollClient
) -> None:
    async def script(conn: int, index: int, head: bytes) -> bytes:
        return answer(b"ok", "Connection: keep-alive")

    raw = await raw_node(script)
    await polls.get(raw.node, "/a")
    assert polls.connections(raw.node) == 1
    raw.close_connections()
    await eventually(lambda: polls.connections(raw.node) == 0, message="closed connection gone")
    assert (await polls.get(raw.node, "/b")).body == b"ok"
    assert raw.connections == 2


async def test_connection_close_answer_is_not_reused(
    raw_node: Callable[[Script], Awaitable[RawNode]], polls: PollClient
) -> None:
    async def script(conn: int, index: int, head: bytes) -> bytes:
        return answer(b"bye", "Connection: close")

    raw = await raw_node(script)
    for _ in range(3):
        assert (await polls.get(raw.node, "/a")).body == b"bye"
    assert raw.connections == 3


async def test_silent_node_times_out_with_aiohttps_wording(
    raw_node: Callable[[Script], Awaitable[RawNode]],
) -> None:
    never = asyncio.Event()

    async def script(conn: int, index: int, head: bytes) -> bytes:
        await never.wait()
        return b""

    raw = await raw_node(script)
    client = PollClient(connect_s=2, read_timeout_s=0.2)
    try:
        with pytest.raises(NodeUnreachable) as info:
            await client.get(raw.node, "/slow")
        assert "(Timeout on reading data from socket)" in str(info.value)
        assert client.connections(raw.node) == 0
    finally:
        never.set()
        await client.close()


async def test_read_limit_restarts_while_bytes_arrive(
    raw_node: Callable[[Script], Awaitable[RawNode]],
) -> None:
    """A slow answer that keeps coming is not cut off: the limit is on idleness, as aiohttp's
    ``sock_read``."""
    wire = answer(b"0123456789")

    async def script(conn: int, index: int, head: bytes) -> list[bytes | float]:
        return [wire[:20], 0.6, wire[20:-3], 0.6, wire[-3:]]  # 1.2 s in all, idle 0.6 s at most

    raw = await raw_node(script)
    client = PollClient(connect_s=2, read_timeout_s=1.0)
    try:
        assert (await client.get(raw.node, "/x")).body == b"0123456789"
    finally:
        await client.close()


async def test_chunked_answer_in_pieces(
    raw_node: Callable[[Script], Awaitable[RawNode]], polls: PollClient
) -> None:
    parts = [b'{"a": ', b"[1, 2, 3]", b"}"]
    wire = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\nX-T: 1\r\n\r\n"

    async def script(conn: int, index: int, head: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + wire

    raw = await raw_node(script)
    for _ in range(2):
        got = await polls.get(raw.node, "/c")
        assert got.body == b'{"a": [1, 2, 3]}'
    assert raw.connections == 1, "a chunked answer ends cleanly and the connection is reused"


async def test_answers_without_length_or_body(
    raw_node: Callable[[Script], Awaitable[RawNode]], polls: PollClient
) -> None:
    async def script(conn: int, index: int, head: bytes) -> bytes | None:
        if b"/304" in head:
            return b'HTTP/1.1 304 Not Modified\r\nETag: W/"1"\r\n\r\n'
        if b"/close" in head:
            return b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"
        return b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"after interim")

    raw = await raw_node(script)
    got = await polls.get(raw.node, "/304")
    assert (got.status, got.body) == (304, b"")
    assert (await polls.get(raw.node, "/interim")).body == b"after interim"
    assert raw.connections == 1
    # an HTTP/1.0 answer without a length lasts until the node closes the connection
    raw_close = await raw_node(_close_after_answer)
    got = await polls.get(raw_close.node, "/close")
    assert (got.status, got.body) == (200, b"until the end")


async def _close_after_answer(conn: int, index: int, head: bytes) -> list[bytes | float]:
    return [b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"until the end", CLOSE]


async def test_big_answers(raw_node: Callable[[Script], Awaitable[RawNode]]) -> None:
    big = bytes(range(256)) * 12_000  # 3 MB

    async def script(conn: int, index: int, head: bytes) -> bytes:
        if b"/chunked" in head:
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (
                len(big),
                big,
            )
        return answer(big)

    raw = await raw_node(script)
    roomy = PollClient(2, 2, PoolLimits(max_body_bytes=4 << 20))
    small = PollClient(2, 2, PoolLimits(max_body_bytes=1 << 20))
    try:
        assert (await roomy.get(raw.node, "/big")).body == big
        assert (await roomy.get(raw.node, "/chunked")).body == big
        for path in ("/big", "/chunked"):
            with pytest.raises(AnswerTooLarge):
                await small.get(raw.node, path)
        assert small.connections(raw.node) == 0, "a half-read connection is not kept"
    finally:
        await roomy.close()
        await small.close()


async def test_node_down(polls: PollClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    node = Node("127.0.0.1", port)
    with pytest.raises(NodeUnreachable) as info:
        await polls.get(node, "/task/x/info")
    assert str(info.value).startswith(
        f"Node 127.0.0.1:{port} is not reachable (Cannot connect to host 127.0.0.1:{port} "
    )
    assert info.value.node == node.key
    assert polls.connections(node) == 0


async def test_garbage_answer_is_unreachable(
    raw_node: Callable[[Script], Awaitable[RawNode]], polls: PollClient
) -> None:
    async def script(conn: int, index: int, head: bytes) -> bytes:
        return b"SSH-2.0-OpenSSH\r\n\r\n"

    raw = await raw_node(script)
    with pytest.raises(NodeUnreachable, match="Invalid status line"):
        await polls.get(raw.node, "/x")


async def test_pool_limit_queues_requests(
    raw_node: Callable[[Script], Awaitable[RawNode]],
) -> None:
    release = asyncio.Event()

    async def script(conn: int, index: int, head: bytes) -> bytes:
        await release.wait()
        return answer(head.split(b" ")[1])

    raw = await raw_node(script)
    client = PollClient(2, 5, PoolLimits(per_node=2))
    try:
        calls = [asyncio.create_task(client.get(raw.node, f"/{i}")) for i in range(6)]
        await eventually(lambda: len(raw.requests) == 2, message="two requests at the node")
        assert raw.connections == 2
        calls[-1].cancel()  # a waiter that leaves gives up its turn
        with contextlib.suppress(asyncio.CancelledError):
            await calls[-1]
        release.set()
        bodies = await asyncio.gather(*calls[:-1])
        assert [b.body for b in bodies] == [f"/{i}".encode() for i in range(5)]
        assert raw.connections == 2
        assert client.connections(raw.node) == 2
    finally:
        release.set()
        await client.close()
