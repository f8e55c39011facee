"""PollClient: small GETs to nodes over per-node pools of keep-alive HTTP/1.1 connections.

Task polls (``GET /task/<uuid>/info`` and ``/output``) are most of a busy cluster's traffic, and
their answers are a few hundred bytes. aiohttp's client spends more CPU on one of them than the
node spends answering it (request and connector objects, timers, a response parser feeding a
stream reader). Here each node gets a pool of connections, each an ``asyncio.Protocol`` that
writes one pre-built request and parses the answer: Content-Length, chunked, or read until the
node closes. Everything else (uploads, downloads, TLS nodes) goes through aiohttp in
``client.py``; an answer larger than ``PoolLimits.max_body_bytes`` raises ``AnswerTooLarge`` so
the caller can ask again through aiohttp's streaming path.

Errors end here: refused connections, timeouts and broken answers become ``NodeUnreachable``
with the wording aiohttp's errors give through ``proxy/forward.py``, so clients see the same
answers on either path. A request on a kept-alive connection that the node had closed meanwhile
(nothing of the answer came back) is sent once more on a fresh connection; polls are idempotent.

Identical polls in flight together (same node, request line and headers) are sent once and share
the answer (``coalesce.py``): a crowd polling one task costs the node one request per round trip.

Must not import use cases or the HTTP edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import cast

from clusterodm import __version__
from clusterodm.compat import timeout
from clusterodm.errors import NodeUnreachable
from clusterodm.model import Node
from clusterodm.nodes.coalesce import Coalescer

__all__ = ["DEFAULT_POOL_LIMITS", "AnswerTooLarge", "PollAnswer", "PollClient", "PoolLimits"]

#: sent on every request; aiohttp sends the same Accept and Accept-Encoding by default
_FIXED_HEADERS = (
    f"User-Agent: ClusterODM/{__version__}\r\nAccept-Encoding: gzip, deflate\r\n".encode()
)
_MAX_HEAD_BYTES = 64 * 1024
_NO_BODY = frozenset({204, 304})
#: answer headers that say where the answer ends
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """How many connections a node gets, how long an idle one is kept, how big an answer is
    read whole."""

    per_node: int = 256  # as aiohttp's connector for nodes (limit_per_host)
    keepalive_s: float = 30.0  # idle connections older than this are closed, not reused
    max_body_bytes: int = 1 << 20  # larger answers: AnswerTooLarge, the caller streams them


DEFAULT_POOL_LIMITS = PoolLimits()


@dataclass(frozen=True, slots=True)
class PollAnswer:
    """A node's whole answer: status, headers as sent (in order, repeats kept) and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class AnswerTooLarge(Exception):
    """The answer is bigger than ``PoolLimits.max_body_bytes``; nothing was passed on."""


class _Stale(Exception):
    """The connection closed before any byte of the answer: safe to send again."""


class _Broken(Exception):
    """The node broke the HTTP exchange; the message says how (aiohttp's wording)."""


class _Phase(Enum):
    IDLE = 0
    HEAD = 1
    LENGTH = 2
    CHUNKED = 3
    UNTIL_CLOSE = 4


class _Connection(asyncio.Protocol):
    """One keep-alive connection to a node: ``fetch`` writes a request, the answer resolves
    the returned future. At most one request at a time (no pipelining)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: _Pool) -> None:
        self.loop = loop
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.keep_alive = True
        self._buffer = bytearray()
        self._waiter: asyncio.Future[PollAnswer] | None = None
        self._phase = _Phase.IDLE
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._length = 0
        self._body = bytearray()
        self._max_body = 0
        self._received = False
        #: loop time of the last bytes received, or of the request (for the read limit)
        self.last_data = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            self.pool.forget(self)
            return
        if self._phase is _Phase.UNTIL_CLOSE and exc is None:
            self.keep_alive = False
            self._finish(bytes(self._body))
        elif not self._received:
            self._fail(_Stale("Server disconnected"))
        else:
            self._fail(_Broken("Server disconnected"))

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # nothing was asked: the connection is out of step
            return
        self._received = True
        self.last_data = self.loop.time()
        self._buffer += data
        try:
            self._advance()
        except (_Broken, AnswerTooLarge) as e:
            self._fail(e)

    # -- requests --------------------------------------------------------------------------

    def fetch(self, request: bytes, max_body_bytes: int) -> asyncio.Future[PollAnswer]:
        waiter = self.loop.create_future()
        if self.closed or self.transport is None or self.transport.is_closing():
            waiter.set_exception(_Stale("Server disconnected"))
            return waiter
        self._waiter = waiter
        self._phase = _Phase.HEAD
        self._received = False
        self._max_body = max_body_bytes
        self.last_data = self.loop.time()
        self.pool.watchdog.watch(self)
        self.transport.write(request)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def time_out(self) -> None:
        self._fail(TimeoutError("Timeout on reading data from socket"))

    def _finish(self, body: bytes) -> None:
        waiter = self._waiter
        self._reset()
        if waiter is not None and not waiter.done():
            waiter.set_result(PollAnswer(self._status, self._headers, body))

    def _fail(self, error: BaseException) -> None:
        waiter = self._waiter
        self._reset()
        self.keep_alive = False
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _reset(self) -> None:
        self.pool.watchdog.busy.discard(self)
        self._phase = _Phase.IDLE
        self._waiter = None
        if self._body:
            self._body = bytearray()

    # -- parsing ---------------------------------------------------------------------------

    def _advance(self) -> None:
        """Parse what has arrived; completes the waiter once the whole answer is in."""
        buf = self._buffer
        if self._phase is _Phase.HEAD:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD_BYTES:
                    raise _Broken("Got more than 65536 bytes when reading the header")
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            if not self._head(head):
                return self._advance() if buf else None  # an interim 1xx answer: skip it
            if self._phase is _Phase.IDLE:
                if buf:
                    raise _Broken("Data after the answer")
                return self._finish(b"")
        if self._phase is _Phase.LENGTH:
            if len(buf) < self._length:
                return
            if len(buf) > self._length:
                raise _Broken("Data after the answer")
            body = bytes(buf)
            buf.clear()
            return self._finish(body)
        if self._phase is _Phase.CHUNKED:
            return self._chunks()
        if self._phase is _Phase.UNTIL_CLOSE:
            self._body += buf
            buf.clear()
            if len(self._body) > self._max_body:
                raise AnswerTooLarge()

    def _head(self, head: bytes) -> bool:
        """Read a status line and headers; False for an interim (1xx) answer."""
        lines = head.decode("utf-8", "surrogateescape").split("\r\n")
        status_line = lines[0]
        code = status_line[9:12]
        if status_line[:7] != "HTTP/1." or status_line[8:9] != " " or not code.isdigit():
            raise _Broken(f"Invalid status line: {status_line[:100]!r}")
        status = int(code)
        if status < 200:
            return False
        headers: list[tuple[str, str]] = []
        length: int | None = None
        chunked = False
        keep_alive = status_line[7] == "1"
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name[0] in " \t" or name[-1] in " \t":
                raise _Broken(f"Invalid header line: {line[:100]!r}")
            value = value.strip()
            headers.append((name, value))
            lname = name.lower()
            if lname not in _FRAMING:
                continue
            if lname == "content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise _Broken(f"Invalid Content-Length: {value[:40]!r}")
                length = int(value)
            elif lname == "transfer-encoding":
                chunked = value.lower().endswith("chunked")
                if not chunked:
                    raise _Broken(f"Unsupported Transfer-Encoding: {value[:40]!r}")
            elif lname == "connection":
                tokens = value.lower()
                if "close" in tokens:
                    keep_alive = False
                elif "keep-alive" in tokens:
                    keep_alive = True
        self._status, self._headers, self.keep_alive = status, headers, keep_alive
        if status in _NO_BODY:
            self._phase = _Phase.IDLE
        elif chunked:
            self._phase, self._length = _Phase.CHUNKED, -1
        elif length is not None:
            if length > self._max_body:
                raise AnswerTooLarge()
            self._phase, self._length = (_Phase.LENGTH, length) if length else (_Phase.IDLE, 0)
        else:
            self._phase, self.keep_alive = _Phase.UNTIL_CLOSE, False
        return True

    def _chunks(self) -> None:
        """Chunked encoding; ``_length`` is the rest of the current chunk, -1 between chunks,
        -2 in the trailers."""
        buf = self._buffer
        while True:
            if self._length == -2:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(buf[:end])
                del buf[: end + 2]
                if not line:  # the empty line that ends the trailers
                    if buf:
                        raise _Broken("Data after the answer")
                    return self._finish(bytes(self._body))
                continue
            if self._length == -1:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise _Broken("Chunk size line too long")
                    return
                size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise _Broken(f"Invalid chunk size: {size_text[:20]!r}") from None
                del buf[: end + 2]
                if size == 0:
                    self._length = -2
                    continue
                if len(self._body) + size > self._max_body:
                    raise AnswerTooLarge()
                self._length = size
            if len(buf) < self._length + 2:
                return
            if buf[self._length : self._length + 2] != b"\r\n":
                raise _Broken("Chunk not followed by CRLF")
            self._body += buf[: self._length]
            del buf[: self._length + 2]
            self._length = -1


class _Watchdog:
    """The read limit of every busy connection, checked by one timer while any is busy: a
    timer per request would cost more than the rest of a request's bookkeeping. The limit is on
    idleness, as aiohttp's ``sock_read``: it restarts whenever bytes arrive. It fires up to a
    quarter of itself (at most 1 s) late."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.interval_s = min(1.0, limit_s / 4)
        self.busy: set[_Connection] = set()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, conn: _Connection) -> None:
        self.busy.add(conn)
        if self._timer is None:
            self._timer = conn.loop.call_later(self.interval_s, self._check, conn.loop)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        for conn in [c for c in self.busy if now - c.last_data >= self.limit_s]:
            conn.time_out()  # leaves ``busy``
        if self.busy:
            self._timer = loop.call_later(self.interval_s, self._check, loop)


class _Pool:
    """The connections to one node: idle ones (newest last) and how many exist in all."""

    def __init__(self, host: str, port: int, limits: PoolLimits, watchdog: _Watchdog) -> None:
        self.host = host
        self.port = port
        self.limits = limits
        self.watchdog = watchdog
        self.idle: deque[_Connection] = deque()
        self.size = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False
        name = host if host.isascii() else host.encode("idna").decode("ascii")
        authority = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
        self.host_header = f"Host: {authority}\r\n".encode("ascii")

    def take(self) -> _Connection | None:
        """The most recently used idle connection still fit for a request, if any."""
        if not self.idle:
            return None
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.idle_since < self.limits.keepalive_s:
                return conn
            self._drop(conn)
        return None

    async def acquire(self, connect_s: float, fresh: bool = False) -> tuple[_Connection, bool]:
        """A connection, idle or (always, if ``fresh``) new, and whether it served a request
        before."""
        while True:
            if not fresh:
                conn = self.take()
                if conn is not None:
                    return conn, True
            elif self.idle and self.size >= self.limits.per_node:
                self._drop(self.idle.popleft())  # make room: the oldest idle one goes
            if self.size < self.limits.per_node:
                break
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # the turn handed to us goes on to the next
                else:
                    with contextlib.suppress(ValueError):
                        self.waiters.remove(waiter)
                raise
        self.size += 1
        try:
            return await self._connect(connect_s), False
        except BaseException:
            self.size -= 1
            self._wake()
            raise

    async def _connect(self, connect_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with timeout(connect_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, self), self.host, self.port
                )
        except (TimeoutError, asyncio.TimeoutError):
            raise _Broken(f"Connection timeout to host http://{self.host}:{self.port}") from None
        except OSError as e:
            reason = e.strerror or str(e) or type(e).__name__
            raise _Broken(
                f"Cannot connect to host {self.host}:{self.port} ssl:default [{reason}]"
            ) from e
        return conn

    def release(self, conn: _Connection) -> None:
        """Back to the pool if it can serve another request, else closed."""
        if conn.keep_alive and not conn.closed and not self.closed:
            conn.idle_since = time.monotonic()
            self.idle.append(conn)
            self._trim()
            self._wake()
        else:
            self._drop(conn)

    def discard(self, conn: _Connection) -> None:
        """Close a connection that is in no state to be reused."""
        self._drop(conn)

    def forget(self, conn: _Connection) -> None:
        """An idle connection the node closed: out of the pool."""
        try:
            self.idle.remove(conn)
        except ValueError:
            return
        self.size -= 1
        self._wake()

    def close(self) -> None:
        self.closed = True
        while self.idle:
            self._drop(self.idle.pop())
        for waiter in self.waiters:
            if not waiter.done():
                waiter.cancel()
        self.waiters.clear()

    def _drop(self, conn: _Connection) -> None:
        self.watchdog.busy.discard(conn)
        conn.close()
        self.size -= 1
        self._wake()

    def _trim(self) -> None:
        """Close the oldest idle connection once it has idled past the keep-alive limit."""
        if self.idle and time.monotonic() - self.idle[0].idle_since >= self.limits.keepalive_s:
            self._drop(self.idle.popleft())

    def _wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class PollClient:
    """Small GETs to plain-HTTP nodes; one instance per process, beside ``NodeClient``."""

    def __init__(
        self,
        connect_s: float,
        read_timeout_s: float,
        limits: PoolLimits = DEFAULT_POOL_LIMITS,
    ) -> None:
        self.connect_s = connect_s
        self.read_timeout_s = read_timeout_s
        self.limits = limits
        self._watchdog = _Watchdog(read_timeout_s)
        self._pools: dict[tuple[str, int], _Pool] = {}
        #: identical polls in flight together share one request to the node (``coalesce.py``)
        self.coalesce = True
        self._shared: Coalescer[PollAnswer] = Coalescer()

    @staticmethod
    def serves(node: Node) -> bool:
        """Plain HTTP only: TLS nodes (port 443) stay with aiohttp."""
        return node.port != 443

    def connections(self, node: Node) -> int:
        """Open connections to ``node`` (idle or busy)."""
        pool = self._pools.get((node.hostname, node.port))
        return pool.size if pool is not None else 0

    async def get(
        self, node: Node, target: str, headers: Sequence[tuple[str, str]] = ()
    ) -> PollAnswer:
        """``GET target`` (path and query, already encoded) on ``node`` with extra ``headers``.
        Raises NodeUnreachable, or AnswerTooLarge (then the node's answer was not passed on).

        An identical request already in flight is not sent again: its answer is shared."""
        address = (node.hostname, node.port)
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = _Pool(*address, self.limits, self._watchdog)
        request = _request(target, pool.host_header, headers)
        if not self.coalesce:
            return await self._fetch(node, pool, request)
        return await self._shared.run((address, request), lambda: self._fetch(node, pool, request))

    async def _fetch(self, node: Node, pool: _Pool, request: bytes) -> PollAnswer:
        retried = False
        while True:
            # without a coroutine when a connection is idle, as mostly; a retry needs a new one
            conn = None if retried else pool.take()
            reused = conn is not None
            if conn is None:
                try:
                    conn, reused = await pool.acquire(self.connect_s, fresh=retried)
                except _Broken as e:
                    raise NodeUnreachable(_unreachable(node, e), node.key) from e
            try:
                answer = await conn.fetch(request, self.limits.max_body_bytes)
            except _Stale as e:
                pool.discard(conn)
                if reused and not retried:
                    retried = True
                    continue
                raise NodeUnreachable(_unreachable(node, e), node.key) from e
            except (_Broken, TimeoutError, asyncio.TimeoutError) as e:
                pool.discard(conn)
                raise NodeUnreachable(_unreachable(node, e), node.key) from e
            except BaseException:  # AnswerTooLarge, or cancelled halfway through an answer
                pool.discard(conn)
                raise
            pool.release(conn)
            return answer

    async def close(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()
        self._watchdog.close()


def _request(target: str, host_header: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    parts = [b"GET ", target.encode("ascii"), b" HTTP/1.1\r\n", host_header, _FIXED_HEADERS]
    accept = False
    for name, value in headers:
        line = f"{name}: {value}\r\n"
        if "\r" in line[:-2] or "\n" in line[:-2]:
            raise ValueError(f"line break in header {name}")
        parts.append(line.encode("utf-8", "surrogateescape"))
        accept = accept or name.lower() == "accept"
    if not accept:
        parts.append(b"Accept: */*\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def _unreachable(node: Node, e: BaseException) -> str:
    """The message ``proxy/forward.py`` gives for the same failure of aiohttp's client."""
    return f"Node {node.key} is not reachable ({e or type(e).__name__})"
