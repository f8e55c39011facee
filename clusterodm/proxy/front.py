"""A lean front for ``GET /info``, the one request clients repeat most that the cluster answers
itself, and for task polls (``GET /task/<uuid>/info`` and ``/output``, relayed to the node by
``front_polls.py``), without aiohttp's request machinery; every other request goes to aiohttp
as it came.

aiohttp's server spends about 80 µs of CPU on any request before a handler runs (parser, request
and response objects, the handler task, the middleware chain); the original ClusterODM answers
``/info`` whole in about 70 µs. Here a small ``asyncio.Protocol`` sits in front of aiohttp's
``RequestHandler`` on each plain-HTTP connection of the proxy's port. It answers a request
itself only when all of this holds, and otherwise gives the connection, with every byte read so
far, to aiohttp for good (``transport.set_protocol``), before writing anything:

- the bytes received hold exactly one complete request head and nothing after it (no partial
  head, no body, no pipelined request);
- the request line is ``GET /info HTTP/1.1`` or ``GET /info?token=T HTTP/1.1`` with ``T`` made of
  unreserved characters only (so it reads the same whatever the query decoding), or a poll of a
  lower-case uuid whose query holds ``token`` and the route's one parameter as digits (a poll
  is relayed only as ``front_polls.py`` says, and never with a conditional or range header);
- the head is small (4 KB, 32 lines at most) and its header lines plain (a token name, printable
  ASCII values), each name once, a ``Host`` among them, and none of ``Content-Length``,
  ``Transfer-Encoding``, ``Expect``, ``Upgrade``, ``Keep-Alive``, ``TE``, and a ``Connection``
  only as ``keep-alive`` (what browsers and python-requests send, HTTP/1.1's default);
- the proxy would answer 200: ``/info`` is not a public path, the failed-token guard lets the
  address in, and the access provider accepts the token without waiting (the local token and
  the users file do; a provider that must ask elsewhere is never answered here).

Its answer is what aiohttp and ``proxy/middleware.py`` give: the body ``info_api`` keeps for the
user's limits, the same headers in the same order (CORS as ``add_cors_headers`` sets them), and
the same metrics. Every refusal, error and other path (401, 429, CORS preflight, 404...) is
aiohttp's own, since those requests are handed over untouched. Idle connections are closed after
aiohttp's keep-alive time. ``CLUSTERODM_FRONT=off`` leaves every request to aiohttp, and so
does an access log (``--log-level verbose``): the front writes no access log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from typing import Any, cast

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from clusterodm.metrics import Metrics
from clusterodm.proxy.deps import ProxyDeps
from clusterodm.proxy.front_polls import PollAnswerer, PollAsk, Reply, user_at_once
from clusterodm.proxy.info_api import info_body
from clusterodm.proxy.middleware import is_public
from clusterodm.proxy.observe import RequestCounter

__all__ = ["FrontSite", "enabled", "info_answerer", "site"]

log = logging.getLogger(__name__)

#: aiohttp's ``keepalive_timeout`` default: idle connections are closed after it
KEEPALIVE_S = 75.0
#: larger heads, or more header lines, go to aiohttp, whose limits decide (8190 per line)
MAX_HEAD_BYTES = 4096
MAX_HEADERS = 32
SWEEP_S = 5.0

Answerer = Callable[[str, str], bytes | None]

_REQUEST_LINE = re.compile(
    rb"GET /(?:info|task/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    rb"/(info|output))(?:\?([^ ]*))? HTTP/1\.1"
).fullmatch
#: a query parameter read the same whatever the decoding: unreserved characters only
_TOKEN = re.compile(rb"[A-Za-z0-9._~-]*").fullmatch
_NUMBER = re.compile(rb"[0-9]{1,9}").fullmatch
#: the one parameter besides ``token`` each poll passes on to the node (``paths.QUERY_ALLOWED``)
_PASSED = {b"info": b"with_output", b"output": b"line"}
_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+").fullmatch
_VALUE = re.compile(rb"[\x20-\x7e]*").fullmatch
#: headers whose meaning only aiohttp's full handling gets right
#: headers aiohttp's path passes on to a node besides Accept (conditional, partial, typed
#: requests): a poll with any of them is left to it
_NOT_FOR_POLLS = frozenset(
    {b"if-none-match", b"if-modified-since", b"range", b"if-range", b"content-type"}
)
_LEFT_TO_AIOHTTP = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"expect",
        b"upgrade",
        b"keep-alive",
        b"te",
    }
)
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n"
_ANY_ORIGIN = b"Access-Control-Allow-Origin: *\r\n"
_SERVER = b"\r\nServer: " + SERVER_SOFTWARE.encode() + b"\r\n\r\n"


def enabled() -> bool:
    return os.environ.get("CLUSTERODM_FRONT", "").lower() not in ("off", "0", "no", "false")


def info_answerer(deps: ProxyDeps, metrics: Metrics) -> Answerer:
    """``(token, ip) -> body`` when the proxy would answer ``GET /info?token=`` with 200 from
    ``ip``, counted as the middleware counts it; None when the request must go to aiohttp."""
    counter = RequestCounter(metrics)
    bytes_sent = metrics.bytes_sent
    info_public = is_public("/info")  # a fixed rule: decided once, not per request

    def answer(token: str, ip: str) -> bytes | None:
        user = None if info_public else user_at_once(deps, token, ip)
        if user is None:
            return None
        body = info_body(deps, user.limits)
        counter.child("/info", 200).inc()
        bytes_sent.inc(len(body))
        return body

    return answer


def _query(raw: bytes | None, passed: bytes | None) -> dict[str, str] | None:
    """``token`` and the parameter ``passed`` on (digits), each at most once; None for any
    other query, which aiohttp reads."""
    out: dict[str, str] = {}
    if not raw:
        return out
    for pair in raw.split(b"&"):
        name, eq, value = pair.partition(b"=")
        if not eq or name.decode("latin-1") in out:
            return None
        if name == b"token" and _TOKEN(value) is not None:
            out["token"] = value.decode()
        elif name == passed and _NUMBER(value) is not None:
            out[name.decode()] = value.decode()
        else:
            return None
    return out


class _Front:
    """One per listening socket: its connections, the Date header, the idle sweep."""

    def __init__(
        self,
        handler_factory: Callable[[], asyncio.Protocol],
        answer: Answerer,
        poll: PollAnswerer | None = None,
    ) -> None:
        self.handler_factory = handler_factory
        self.answer = answer
        self.poll = poll
        self.live: set[_Connection] = set()
        self.answered = 0
        self._date_at = 0
        self._date = b""
        self._sweeper: asyncio.TimerHandle | None = None

    def connection(self) -> asyncio.Protocol:
        return _Connection(self)

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._date_at:
            self._date_at, self._date = now, formatdate(now, usegmt=True).encode()
        return self._date

    def respond(self, data: bytes, ip: str) -> bytes | Coroutine[Any, Any, Reply | None] | None:
        """The whole answer to ``data`` if it is a request answered here (for a poll relayed to
        a node, a coroutine giving it, or None), else None."""
        if not data.startswith((b"GET /info", b"GET /task/")):
            return None
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 != len(data) or end > MAX_HEAD_BYTES:
            return None
        lines = data[:end].split(b"\r\n")
        request = _REQUEST_LINE(lines[0])
        if request is None or len(lines) > MAX_HEADERS:
            return None
        uuid, action, raw_query = request.groups()
        query = _query(raw_query, _PASSED.get(action))
        if query is None:
            return None
        origin: bytes | None = None
        accept: bytes | None = None
        seen: set[bytes] = set()
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or _NAME(name) is None or _VALUE(value) is None:
                return None
            lower = name.lower()
            if lower in _LEFT_TO_AIOHTTP or lower in seen:  # repeats: aiohttp refuses some
                return None
            if lower == b"connection" and value.strip(b" ").lower() != b"keep-alive":
                return None  # HTTP/1.1's default said again is the same request; others not
            seen.add(lower)
            if lower == b"origin":
                origin = value.strip(b" ")
            elif lower == b"accept":
                accept = value.strip(b" ")
        if b"host" not in seen:
            return None
        token = query.pop("token", "")
        if action is None:
            if query:
                return None
            return self._info(token, ip, origin)
        if self.poll is None or seen & _NOT_FOR_POLLS:
            return None
        ask = PollAsk(
            uuid.decode(),
            action.decode(),
            token,
            query,
            origin or None,
            accept.decode() if accept is not None else None,
        )
        return self.poll(ask, ip)

    def _info(self, token: str, ip: str, origin: bytes | None) -> bytes | None:
        body = self.answer(token, ip)
        if body is None:
            return None
        cors = (
            b"Access-Control-Allow-Origin: "
            + origin
            + b"\r\nAccess-Control-Allow-Credentials: true\r\nVary: Origin\r\n"
            if origin
            else _ANY_ORIGIN
        )
        length = b"Content-Length: " + str(len(body)).encode() + b"\r\nDate: " + self.date()
        self.answered += 1
        return b"".join((_HEAD, cors, length, _SERVER, body))

    def start_sweeping(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(SWEEP_S, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        limit = loop.time() - KEEPALIVE_S
        for conn in [c for c in self.live if c.idle_since < limit]:
            conn.close()
        self._sweeper = loop.call_later(SWEEP_S, self._sweep, loop)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.live):
            conn.close()


class _Connection(asyncio.Protocol):
    """A client connection while the front answers it; handed to aiohttp at its first request
    that the front does not answer."""

    __slots__ = ("busy", "closed", "front", "idle_since", "ip", "loop", "paused", "transport")

    def __init__(self, front: _Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.ip = ""
        self.paused = False  # the client reads nothing: nothing more is read from it
        self.busy: asyncio.Task[None] | None = None  # a poll relayed to a node
        self.closed = False
        self.loop = asyncio.get_running_loop()
        self.idle_since = self.loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        peer = transport.get_extra_info("peername")
        self.ip = str(peer[0]) if isinstance(peer, tuple | list) and peer else ""
        self.front.live.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            answer = self.front.respond(data, self.ip)
        except Exception:  # a bug here must not cost the request: aiohttp answers it
            log.exception("front: %s handed to aiohttp after an error", self.ip)
            answer = None
        if answer is None:
            self._hand_over(data)
            return
        assert self.transport is not None
        if isinstance(answer, bytes):
            self.transport.write(answer)
            self.idle_since = self.loop.time()
            return
        # a poll: nothing more is read from the client until it is answered (no pipelining)
        self.transport.pause_reading()
        self.busy = self.loop.create_task(self._answer_later(answer, data))

    async def _answer_later(self, answer: Coroutine[Any, Any, Reply | None], data: bytes) -> None:
        try:
            reply = await answer
        except Exception:
            log.exception("front: %s handed to aiohttp after an error", self.ip)
            reply = None
        self.busy = None
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return
        if not self.paused:
            transport.resume_reading()
        if reply is None:
            self._hand_over(data)
            return
        self.front.answered += 1
        transport.write(reply(self.front.date()))
        self.idle_since = self.loop.time()

    def _hand_over(self, data: bytes) -> None:
        """From now on aiohttp's handler owns the connection, starting with ``data``."""
        self.front.live.discard(self)
        transport = self.transport
        assert transport is not None
        handler = self.front.handler_factory()
        handler.connection_made(transport)
        transport.set_protocol(handler)
        if self.paused:
            handler.pause_writing()
        handler.data_received(data)

    def pause_writing(self) -> None:  # the client does not read its answers: stop reading
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and self.busy is None:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.front.live.discard(self)

    def close(self) -> None:
        self.closed = True
        self.front.live.discard(self)
        if self.busy is not None:  # the cluster stops: the poll's answer has nowhere to go
            self.busy.cancel()
        if self.transport is not None:
            self.transport.close()


def site(
    runner: web.BaseRunner,
    host: str | None,
    port: int,
    *,
    backlog: int,
    ssl_context: ssl.SSLContext | None = None,
    answer: Answerer | None = None,
    poll: PollAnswerer | None = None,
) -> web.TCPSite:
    """A ``FrontSite`` when given ``answer`` on plain HTTP, else aiohttp's ``TCPSite``."""
    if answer is not None and ssl_context is None:
        return FrontSite(runner, host, port, backlog=backlog, answer=answer, poll=poll)
    return web.TCPSite(runner, host, port, ssl_context=ssl_context, backlog=backlog)


class FrontSite(web.TCPSite):
    """``web.TCPSite`` whose connections meet the front first (plain HTTP only)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        backlog: int,
        answer: Answerer,
        poll: PollAnswerer | None = None,
    ) -> None:
        super().__init__(runner, host, port, backlog=backlog)
        self._answer = answer
        self._poll = poll
        self._front: _Front | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site, as TCPSite.start does first
        server = self._runner.server
        assert server is not None
        handler_factory = cast(Callable[[], asyncio.Protocol], server)
        self._front = _Front(handler_factory, self._answer, self._poll)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._front.connection,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
        self._front.start_sweeping()

    @property
    def answered(self) -> int:
        """Requests the front answered itself."""
        return self._front.answered if self._front is not None else 0

    async def stop(self) -> None:
        await super().stop()
        if self._front is not None:
            with contextlib.suppress(Exception):
                self._front.close()
