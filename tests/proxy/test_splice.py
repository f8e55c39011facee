"""The zero-copy relay of large answers (``forward._splice_loop``) between real sockets, and a
large all.zip through the cluster byte for byte."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator

import aiohttp
import pytest

from clusterodm.proxy import forward
from tests.conftest import ClusterFactory, SimnodeFactory

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="splice(2) is Linux only")


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one loopback TCP connection (the relay reads TCP sockets in production)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return client, accepted


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket, socket.socket, socket.socket]]:
    """(node side, relay source, relay destination, client side)."""
    node, src = _tcp_pair()
    dst, client = _tcp_pair()
    src.setblocking(False)
    dst.setblocking(False)
    yield node, src, dst, client
    for sock in (node, src, dst, client):
        sock.close()


def _read_all(sock: socket.socket, size: int, out: bytearray) -> None:
    sock.settimeout(20)
    while len(out) < size:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return
        out += chunk


def _relay_in_thread(src: int, dst: int, size: int, idle_s: float) -> tuple[threading.Thread, list]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            forward._splice_loop(src, dst, size, idle_s)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_a_large_body_arrives_whole(sockets: tuple[socket.socket, ...]) -> None:
    node, src, dst, client = sockets
    data = os.urandom(12 << 20)
    got = bytearray()
    reader = threading.Thread(target=_read_all, args=(client, len(data), got))
    reader.start()
    relay, errors = _relay_in_thread(src.fileno(), dst.fileno(), len(data), 10.0)
    node.sendall(data)
    relay.join(30)
    reader.join(30)
    assert not errors
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_a_trickle_below_the_batch_is_relayed_as_it_comes(
    sockets: tuple[socket.socket, ...],
) -> None:
    """Pieces far smaller than the batch, each a while apart: every piece reaches the client
    within a bound of its sending, and the whole body arrives; none of it counts as idle."""
    node, src, dst, client = sockets
    pieces = [os.urandom(1000) for _ in range(8)]
    size = sum(len(p) for p in pieces)
    relay, errors = _relay_in_thread(src.fileno(), dst.fileno(), size, 1.0)
    client.settimeout(5)
    got = bytearray()
    for piece in pieces:
        sent = time.monotonic()
        node.sendall(piece)
        want = len(got) + len(piece)
        while len(got) < want:
            got += client.recv(65536)
        assert time.monotonic() - sent < 2.0, "a small piece was held back for the batch"
    relay.join(10)
    assert not errors
    assert bytes(got) == b"".join(pieces)


def test_a_silent_node_times_out(sockets: tuple[socket.socket, ...]) -> None:
    node, src, dst, _ = sockets
    node.sendall(b"x" * 100)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        forward._splice_loop(src.fileno(), dst.fileno(), 1000, 0.5)
    assert 0.4 < time.monotonic() - started < 5.0


def test_a_node_closing_early_is_an_error(sockets: tuple[socket.socket, ...]) -> None:
    node, src, dst, _ = sockets
    node.sendall(b"y" * 5000)
    node.shutdown(socket.SHUT_WR)
    with pytest.raises(ConnectionError):
        forward._splice_loop(src.fileno(), dst.fileno(), 1 << 20, 5.0)


async def test_a_large_all_zip_through_the_cluster_is_byte_equal(
    simnode_factory: SimnodeFactory, cluster_factory: ClusterFactory
) -> None:
    """Larger than ``SPLICE_MIN``: relayed by splice; the same bytes as from the node."""
    sim = await simnode_factory(zip_size=forward.SPLICE_MIN * 3)
    cluster = await cluster_factory([sim])
    uuid = str(uuidlib.uuid4())
    async with aiohttp.ClientSession() as s:
        form = aiohttp.FormData()
        form.add_field("images", b"i" * 1000, filename="a.jpg")
        r = await s.post(f"{sim.url}/task/new", data=form, headers={"set-uuid": uuid})
        assert (await r.json())["uuid"] == uuid
        node_key = cluster.registry.nodes()[0].key
        await cluster.deps.routes.add(uuid, node_key, "")
        digests = []
        for url in (sim.url, cluster.url):
            deadline = time.monotonic() + 20
            while True:
                r = await s.get(f"{url}/task/{uuid}/download/all.zip")
                if r.status == 200 and r.content_length and r.content_length > 1000:
                    break
                await r.read()
                assert time.monotonic() < deadline, "the node never finished the task"
                await asyncio.sleep(0.1)
            digest = hashlib.sha256()
            async for chunk in r.content.iter_chunked(1 << 20):
                digest.update(chunk)
            digests.append((r.content_length, digest.hexdigest()))
    assert digests[0] == digests[1]
    assert digests[0][0] == forward.SPLICE_MIN * 3
