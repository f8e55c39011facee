"""Streaming forwarder: a client request to a node and the node's answer back, both streamed.

The client's ``token`` is replaced by the node token; hop-by-hop headers are dropped both ways.
Task polls go through the node client's ``PollClient`` (``forward_poll``), which costs a fraction
of aiohttp's client; everything else through aiohttp (``forward``). Small answers are read whole
and sent in one piece, which is cheaper than streaming; large ones (``all.zip``) stream with flat
memory, and ``Range`` passes through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import re
import select
import socket
import sys
import termios
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, quote_plus

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from clusterodm.errors import NodeUnreachable
from clusterodm.model import Node
from clusterodm.nodes.client import NodeClient
from clusterodm.nodes.paths import NodePath
from clusterodm.nodes.polls import AnswerTooLarge
from clusterodm.proxy.middleware import add_cors_headers

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
#: headers of the client's request worth passing to a node
REQUEST_HEADERS = frozenset(
    {"range", "if-range", "if-none-match", "if-modified-since", "accept", "content-type"}
)
SMALL_BODY = 1 << 20
#: statuses whose answers have no body, whatever their headers say (RFC 9110)
NO_BODY = frozenset({204, 304})
#: how much of a streamed answer may wait in the proxy before the node is paused
READ_BUFFER = 1 << 20


#: characters left as they are in a path sent to a node (``%`` too: the path is already encoded)
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"


def response_headers(upstream: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """A node's answer headers as the client gets them: hop-by-hop and CORS ones dropped (the
    middleware sets CORS), the rest in order."""
    return CIMultiDict(
        [
            (k, v)
            for k, v in upstream
            if (lk := k.lower()) not in HOP_BY_HOP and not lk.startswith("access-control-")
        ]
    )


def node_target(path: str, query: Mapping[str, str], node_token: str) -> str:
    """Path and query for a node (the client's token swapped for the node token), encoded as
    ``urlencode`` does; the same parameters as ``NodeClient.url`` gives aiohttp."""
    params = {k: v for k, v in query.items() if k != "token"}
    if node_token:
        params["token"] = node_token
    target = path if _plain_path(path) else quote(path, safe=_PATH_SAFE)
    if not params:
        return target
    return target + "?" + "&".join(f"{_quoted(k)}={_quoted(v)}" for k, v in params.items())


_plain_path = re.compile(r"[A-Za-z0-9/%:@!$&'()*+,;=._~-]*").fullmatch


def _quoted(text: str) -> str:
    """``quote_plus``, remembered for the short strings that polls repeat (tokens, names)."""
    return _quoted_short(text) if len(text) <= 128 else quote_plus(text)


_quoted_short = functools.lru_cache(maxsize=1024)(quote_plus)


async def forward_poll(
    request: web.Request,
    client: NodeClient,
    node: Node,
    path: NodePath,
    query: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """A small GET (``/task/<uuid>/info``, ``/output``) through the ``PollClient``; other
    methods, TLS nodes and answers larger than it reads whole go through ``forward``.
    ``query`` is what the route passes on (``paths.QUERY_ALLOWED``), never the client's own."""
    polls = client.polls
    query = query or {}
    if request.method != "GET" or not polls.serves(node):
        return await forward(request, client, node, path, query=query)
    asked = request.headers
    headers = [(name, value) for name in REQUEST_HEADERS if (value := asked.get(name)) is not None]
    try:
        answer = await polls.get(node, node_target(path, query, node.token), headers)
    except AnswerTooLarge:
        return await forward(request, client, node, path, query=query)
    return web.Response(
        status=answer.status, body=answer.body, headers=response_headers(answer.headers)
    )


async def forward(
    request: web.Request,
    client: NodeClient,
    node: Node,
    path: NodePath,
    *,
    query: Mapping[str, str] | None = None,
    with_body: bool = False,
) -> web.StreamResponse:
    """Send ``request`` to ``node`` at ``path`` with ``query`` (what the route passes on, from
    its allow-list) and relay the answer."""
    headers = {k: v for k, v in request.headers.items() if k.lower() in REQUEST_HEADERS}
    url = client.url(node, path, query)
    data = request.content if with_body and request.body_exists else None
    try:
        upstream = await client.session.request(
            request.method,
            url,
            headers=headers,
            data=data,
            timeout=client.stream_timeout,
            allow_redirects=False,
            read_bufsize=READ_BUFFER,
        )
    except (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError, OSError) as e:
        raise NodeUnreachable(f"Node {node.key} is not reachable ({e or type(e).__name__})") from e
    try:
        if upstream.status < 200:
            # aiohttp reads past 100/103 itself; any other 1xx (101) is not an answer to relay
            raise NodeUnreachable(f"Node {node.key} answered {upstream.status}")
        if request.method == "HEAD" or upstream.status in NO_BODY:
            return _bodyless(request, upstream)
        length = upstream.content_length
        if length is not None and length <= SMALL_BODY:
            body = await upstream.read()
            return web.Response(
                status=upstream.status,
                body=body,
                headers=response_headers(upstream.headers.items()),
            )
        stream = web.StreamResponse(
            status=upstream.status, headers=response_headers(upstream.headers.items())
        )
        if length is not None:
            stream.content_length = length
        add_cors_headers(request, stream)
        await stream.prepare(request)
        if length is not None and await _splice_rest(request, stream, upstream, length, client):
            await stream.write_eof()
            return stream
        try:
            await _relay(upstream.content, stream)
        except (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError) as e:
            # The stream has started: nothing sensible can be sent now but a broken connection.
            log.warning("stream from %s broke: %s", node.key, e)
            if request.transport is not None:
                request.transport.close()
            return stream
        await stream.write_eof()
        return stream
    except (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError) as e:
        raise NodeUnreachable(f"Node {node.key} broke off ({e or type(e).__name__})") from e
    finally:
        upstream.release()


def _bodyless(request: web.Request, upstream: aiohttp.ClientResponse) -> web.Response:
    """The answer to a HEAD, or a 204/304: status and headers only, the body never read.

    aiohttp gives such answers one shared empty reader; reading it in a loop never ends (#14).
    A HEAD keeps the node's ``Content-Length``, which says how large the GET would be.
    """
    resp = web.Response(status=upstream.status, headers=response_headers(upstream.headers.items()))
    length = upstream.headers.get("Content-Length")
    if request.method == "HEAD" and length is not None and length.isascii() and length.isdigit():
        resp.headers["Content-Length"] = length
    return resp


async def _relay(content: aiohttp.StreamReader, stream: web.StreamResponse) -> None:
    """Copy ``content`` to ``stream`` chunk by chunk as they arrived (never joined, no extra
    copy) until the body's end.

    ``readchunk`` may hand back an empty chunk that is not the end (a chunked-encoding
    boundary); the loop then yields once and reads on, so it can never spin the event loop.
    """
    while True:
        chunk, _ = await content.readchunk()
        if chunk:
            await stream.write(chunk)
        elif content.at_eof():
            return
        else:
            await asyncio.sleep(0)


# --- zero-copy relay of large answers (Linux) -------------------------------------------------
#
# Relaying a large body through Python costs several copies per byte (the socket read, the HTTP
# parser, the write) and caps a download at a fraction of what the node serves. On Linux the
# rest of a Content-Length body is instead moved from the node's socket to the client's through
# a pipe with splice(2), in a worker thread, without the bytes ever entering Python. The thread
# wakes once a batch has arrived (``SO_RCVLOWAT``), not for every piece the node writes.

SPLICE_MIN = 8 << 20
#: downloads relayed by splice at once (a thread each); more fall back to the Python relay
SPLICE_THREADS = 32
_splice_pool: ThreadPoolExecutor | None = None
_splicing = 0
_PIPE_SIZE = 1 << 20
#: bytes the relay waits for before it moves them on (``SO_RCVLOWAT``): about a tenth of the
#: CPU per GB of moving every piece as it comes; 1 MB starves the node's socket of room
_BATCH = 256 << 10
#: at most this long a smaller piece waits for the batch to fill
BATCH_WAIT_S = 0.2
_F_SETPIPE_SZ = 1031


def _can_splice(request: web.Request, upstream: aiohttp.ClientResponse, length: int) -> bool:
    if not hasattr(os, "splice") or length < SPLICE_MIN or request.method != "GET":
        return False
    down, conn = request.transport, upstream.connection
    if down is None or conn is None or conn.transport is None:
        return False
    if down.get_extra_info("sslcontext") or conn.transport.get_extra_info("sslcontext"):
        return False
    if upstream.headers.get("Transfer-Encoding") or upstream.headers.get("Content-Encoding"):
        return False
    return (
        down.get_extra_info("socket") is not None
        and conn.transport.get_extra_info("socket") is not None
    )


async def _splice_rest(
    request: web.Request,
    stream: web.StreamResponse,
    upstream: aiohttp.ClientResponse,
    length: int,
    client: NodeClient,
) -> bool:
    """Send the whole body of ``upstream`` with splice(2); False if not possible here (then
    nothing was consumed). Once started, a failure closes the client's connection."""
    global _splice_pool, _splicing
    if _splicing >= SPLICE_THREADS or not _can_splice(request, upstream, length):
        return False
    if _splice_pool is None:
        _splice_pool = ThreadPoolExecutor(SPLICE_THREADS, thread_name_prefix="splice")
    _splicing += 1
    conn = upstream.connection
    down = request.transport
    assert conn is not None and conn.transport is not None and down is not None
    up_transport = conn.transport
    # From here the node's socket is read by us only: what aiohttp already holds goes first.
    up_transport.pause_reading()
    head = upstream.content.read_nowait(-1)
    up_transport.pause_reading()  # reading the buffer may have resumed it
    try:
        await stream.write(head)  # also sends the headers, which aiohttp may still hold
        # the transport's buffer must be empty before bytes go around it; it has no event for that
        while down.get_write_buffer_size() and not down.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        src = os.dup(up_transport.get_extra_info("socket").fileno())
        dst = os.dup(down.get_extra_info("socket").fileno())
        stop = threading.Event()
        relay = asyncio.get_running_loop().run_in_executor(
            _splice_pool,
            _splice_loop,
            src,
            dst,
            length - len(head),
            client.timeouts.stream_read_s,
            stop,
        )
        try:
            while not relay.done():
                await asyncio.wait([relay], timeout=1.0)
                if down.is_closing():  # the client left, or the cluster closes connections
                    stop.set()
            relay.result()
        except asyncio.CancelledError:
            stop.set()  # shutting down: the thread lets go within a second
            with contextlib.suppress(Exception):
                await relay
            raise
        finally:
            os.close(src)
            os.close(dst)
    except OSError as e:
        log.warning("relay of %s broke: %s", request.path, e)
        down.close()
    finally:
        _splicing -= 1
        upstream.close()  # the node's connection is in no state to be reused
    return True


def _wait(poller: select.poll, idle_s: float, stop: threading.Event, what: str) -> None:
    """Until ``poller`` is ready: at most ``idle_s``, looking at ``stop`` every second."""
    deadline = time.monotonic() + idle_s
    while not poller.poll(min(1000, max(1, int((deadline - time.monotonic()) * 1000)))):
        if stop.is_set():
            raise ConnectionAbortedError("the cluster is stopping")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} for too long")


def _wait_batch(poller: select.poll, src: int, idle_s: float, stop: threading.Event) -> None:
    """Until a batch has arrived on ``src`` (its ``SO_RCVLOWAT``), or anything has and
    ``BATCH_WAIT_S`` passed: a node sending in a trickle is relayed late by that at most, not
    held back until a batch fills. Nothing at all for ``idle_s``: TimeoutError."""
    deadline = time.monotonic() + idle_s
    while not poller.poll(int(BATCH_WAIT_S * 1000)):
        if _unread(src):
            return
        if stop.is_set():
            raise ConnectionAbortedError("the cluster is stopping")
        if time.monotonic() >= deadline:
            raise TimeoutError("node sent nothing for too long")


def _set_lowat(fd: int, size: int) -> None:
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
    finally:
        sock.close()


def _unread(fd: int) -> int:
    """Bytes received on socket ``fd`` and not read yet."""
    got = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(got, sys.byteorder)


def _splice_loop(
    src: int, dst: int, remaining: int, idle_s: float, stop: threading.Event | None = None
) -> None:
    """Move ``remaining`` bytes from socket ``src`` to socket ``dst`` (both non-blocking)."""
    stop = stop or threading.Event()
    pipe_r, pipe_w = os.pipe()
    try:
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe_w, _F_SETPIPE_SZ, _PIPE_SIZE)
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        readable, writable = select.poll(), select.poll()
        readable.register(src, select.POLLIN)
        writable.register(dst, select.POLLOUT)
        lowat = 0
        while remaining > 0:
            if stop.is_set():
                raise ConnectionAbortedError("the cluster is stopping")
            # wake only once a batch has arrived (or the body's rest): a node writing in small
            # pieces would otherwise cost a round of this loop, and a thread switch, per piece
            want = min(remaining, _BATCH)
            if want != lowat:
                lowat = want
                with contextlib.suppress(OSError):
                    _set_lowat(src, want)
            _wait_batch(readable, src, idle_s, stop)
            try:
                moved = os.splice(src, pipe_w, min(remaining, _PIPE_SIZE), flags=flags)
            except BlockingIOError:
                continue
            if moved == 0:
                raise ConnectionError("node closed the connection early")
            remaining -= moved
            while moved:
                try:
                    sent = os.splice(pipe_r, dst, moved, flags=flags)
                except BlockingIOError:
                    _wait(writable, idle_s, stop, "client read nothing")
                    continue
                moved -= sent
    finally:
        os.close(pipe_r)
        os.close(pipe_w)
