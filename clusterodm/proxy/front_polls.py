"""Task polls answered by the lean front (``front.py``): ``GET /task/<uuid>/info`` and
``/output``, the requests a busy cluster gets most after ``/info``, relayed to the owning node
without aiohttp's request machinery.

The front asks ``PollAnswerer`` with a request it has parsed (a plain ``GET``, one complete
head, only ``token`` and the parameter the route passes on, ``with_output`` or ``line``, as
digits). The answerer decides at once, without waiting, whether the request is one it relays:

- the access provider accepts the token without waiting, the address is not refused, and the
  store is not shared between instances (where routes may have to be fetched);
- the uuid has a route in memory that the user may see, to a node that is online and reached
  over plain HTTP, and the cluster holds no task-table entry for it (held tasks may be answered
  from what the cluster knows, ``tasks/lastknown.py``).

Then it returns a coroutine that asks the node through the ``PollClient`` (coalesced with
identical polls, as aiohttp's path does) and gives the whole answer's bytes: the node's status
and headers as ``forward.forward_poll`` passes them, the CORS headers of the middleware, the
headers aiohttp adds. The node's answer counts as it does on aiohttp's path: the node's queue
(``task_seen``), the task's last known state, the request and byte counters. Anything else (no
decision at once, an error, an answer other than 200) is None: the front then gives the request
to aiohttp unchanged, which answers it, errors included, in its own words. A node that does not
answer is thus asked twice, once here and once by aiohttp, for the polls under way when it
fails: the first failure takes it offline, and the front relays nothing to it until it is
back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp.http import SERVER_SOFTWARE

from clusterodm.access.base import User
from clusterodm.access.guard import TooManyFailures
from clusterodm.access.local import LocalAccess
from clusterodm.access.users import UsersAccess
from clusterodm.errors import ClusterError, NodeUnreachable
from clusterodm.metrics import Metrics
from clusterodm.nodes import paths
from clusterodm.nodes.polls import AnswerTooLarge
from clusterodm.proxy.deps import ProxyDeps
from clusterodm.proxy.forward import node_target, response_headers
from clusterodm.proxy.observe import RequestCounter
from clusterodm.proxy.tasks_api import status_code_in

__all__ = ["PollAnswerer", "PollAsk", "Reply", "poll_answerer", "user_at_once"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PollAsk:
    """A parsed poll: ``GET /task/<uuid>/<action>?token=...`` (``action``: info or output)."""

    uuid: str
    action: str
    token: str
    query: dict[str, str]  # what the route passes on to the node
    origin: bytes | None  # the Origin header, when sent
    accept: str | None  # the Accept header, passed on as aiohttp's path does


Reply = Callable[[bytes], bytes]
"""Given the Date header's value, the whole answer."""
PollAnswerer = Callable[[PollAsk, str], Coroutine[Any, Any, Reply | None] | None]

_ROUTES = {"info": "/task/{uuid}/info", "output": "/task/{uuid}/output"}


def poll_answerer(deps: ProxyDeps, metrics: Metrics) -> PollAnswerer:
    """``(ask, ip) -> coroutine`` when the front relays the poll itself, None otherwise."""
    counter = RequestCounter(metrics)
    bytes_sent = metrics.bytes_sent

    def answer(ask: PollAsk, ip: str) -> Coroutine[Any, Any, Reply | None] | None:
        if deps.actions.announce is not None:
            return None
        user = user_at_once(deps, ask.token, ip)
        route = deps.routes.get(ask.uuid)
        if user is None or route is None or not deps.actions.visible(user, route.owner):
            return None
        node = deps.registry.get(route.node_key)
        if node is None or deps.table.get(ask.uuid) is not None:
            return None
        polls = deps.client.polls
        if not polls.serves(node) or not deps.registry.is_online(node):
            return None
        try:
            path = paths.task(ask.uuid, ask.action)
        except paths.BadNodePath:
            return None
        target = node_target(path, ask.query, node.token)
        headers = [("accept", ask.accept)] if ask.accept is not None else []

        async def relay() -> Reply | None:
            deps.routes.touch(ask.uuid)
            asked_ms = deps.registry.now_ms()
            try:
                got = await polls.get(node, target, headers)
            except NodeUnreachable:
                # offline from now on, so the front leaves the next polls to aiohttp's path,
                # which answers them from the task's last known state where it can
                deps.registry.record_failure(node.key)
                return None
            except (ClusterError, AnswerTooLarge):
                return None  # aiohttp's path asks again and answers as it does
            if got.status != 200:
                return None
            if ask.action == "info":
                deps.registry.task_seen(node.key, ask.uuid, status_code_in(got.body), asked_ms)
                if not any(name.lower() == "content-encoding" for name, _ in got.headers):
                    deps.last_known.note(ask.uuid, got.body)
            counter.child(_ROUTES[ask.action], 200).inc()
            bytes_sent.inc(len(got.body))
            return _reply(got.headers, got.body, ask.origin)

        return relay()

    return answer


def _reply(node_headers: list[tuple[str, str]], body: bytes, origin: bytes | None) -> Reply:
    """The answer aiohttp writes for ``web.Response(200, body, headers=<node's, filtered>)``
    with the middleware's CORS headers: the node's headers in order (``response_headers``),
    then CORS, Content-Length, Content-Type if the node sent none, Date and Server unless the
    node sent them."""
    names: set[str] = set()
    lines: list[bytes] = [b"HTTP/1.1 200 OK\r\n"]
    for name, value in response_headers(node_headers).items():
        lower = name.lower()
        if lower == "vary" and origin:
            if "vary" in names:
                continue  # setting Vary replaces the first one in place, drops the others
            name, value = "Vary", "Origin"
        names.add(lower)
        lines.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
    if origin:
        lines += (
            b"Access-Control-Allow-Origin: " + origin + b"\r\n",
            b"Access-Control-Allow-Credentials: true\r\n",
        )
        if "vary" not in names:
            lines.append(b"Vary: Origin\r\n")
    else:
        lines.append(b"Access-Control-Allow-Origin: *\r\n")
    lines.append(b"Content-Length: " + str(len(body)).encode() + b"\r\n")
    if "content-type" not in names:
        lines.append(b"Content-Type: application/octet-stream\r\n")
    head = b"".join(lines)
    server = b"" if "server" in names else b"Server: " + SERVER_SOFTWARE.encode() + b"\r\n"
    has_date = "date" in names

    def whole(date: bytes) -> bytes:
        dated = b"" if has_date else b"Date: " + date + b"\r\n"
        return b"".join((head, dated, server, b"\r\n", body))

    return whole


def user_at_once(deps: ProxyDeps, token: str, ip: str) -> User | None:
    """The user of ``token`` when the middleware would let the request in from ``ip`` and the
    access provider says so without waiting (the local token and the users file do; one that
    must ask elsewhere is aiohttp's); None otherwise, and aiohttp's path answers."""
    if type(deps.access) not in (LocalAccess, UsersAccess):
        return None
    try:
        deps.guard.check(ip)
    except TooManyFailures:
        return None
    user: User | None = at_once(deps.access.authenticate(token))
    return user


def at_once(coro: Coroutine[Any, Any, Any]) -> Any:
    """The coroutine's result if it completes without waiting; None if it raises or would wait
    (then it is closed)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    except Exception:
        return None
    coro.close()
    return None
