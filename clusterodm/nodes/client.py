"""NodeClient: typed calls to one NodeODM-API node over a shared connection pool.

Owns the only ``aiohttp.ClientSession`` used to talk to nodes, so connections are reused across
every forwarded request, and the ``PollClient`` (``polls.py``) that forwards task polls more
cheaply. aiohttp's errors are turned into ``NodeError`` here and nowhere else.
Must not import use cases or the HTTP edge.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from clusterodm.config import Timeouts
from clusterodm.errors import NodeRejected, NodeUnreachable
from clusterodm.model import Node, NodeInfo
from clusterodm.nodes import paths
from clusterodm.nodes.paths import NodePath
from clusterodm.nodes.polls import PollClient
from clusterodm.nodes.ratelimit import RateLimiter

log = logging.getLogger(__name__)

UPLOAD_CHUNK = 1024 * 1024  # one thread hand-off per MiB read back from staging


class NodeClient:
    """NodeODM calls with their own time limits; one instance per process."""

    def __init__(
        self, timeouts: Timeouts | None = None, rate_limiter: RateLimiter | None = None
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        self._session: aiohttp.ClientSession | None = None
        self.rate_limiter = rate_limiter
        #: forwarded polls: a few seconds at most, then the proxy answers what it last knew
        poll_s = self.timeouts.poll_s
        self.polls = PollClient(min(self.timeouts.connect_s, poll_s), poll_s)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            # one session serves every user: a cookie set by a node must not follow the next
            # user's request, and skipping the jar saves work on every forwarded request
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect_s),
        )

    async def close(self) -> None:
        await self.polls.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("NodeClient used before start()")
        return self._session

    @staticmethod
    def url(node: Node, path: NodePath, query: Mapping[str, str] | None = None) -> URL:
        """The node's URL for ``path`` (built from checked parts, ``paths.py``), with the node
        token in place of any client token; the caller chose ``query`` from an allow-list."""
        params = {k: v for k, v in (query or {}).items() if k != "token"}
        if node.token:
            params["token"] = node.token
        return URL(node.base_url).joinpath(*path.segments).with_query(params)

    @functools.cached_property
    def stream_timeout(self) -> aiohttp.ClientTimeout:
        """For forwarded requests: no total, an idle limit on reads (built once)."""
        return aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeouts.connect_s, sock_read=self.timeouts.stream_read_s
        )

    def _api_timeout(self, total_s: float | None = None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=total_s or self.timeouts.api_s, sock_connect=self.timeouts.connect_s
        )

    async def _exchange(
        self,
        method: str,
        node: Node,
        path: NodePath,
        limits: aiohttp.ClientTimeout,
        query: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> tuple[int, bytes]:
        """One request to a node: its status and body; network failures -> NodeUnreachable."""
        try:
            async with self.session.request(
                method, self.url(node, path, query), timeout=limits, **kwargs
            ) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError, OSError) as e:
            raise NodeUnreachable(f"{node.key} unreachable: {_describe(e)}", node.key) from e

    @staticmethod
    def _decode(node: Node, path: NodePath, body: bytes) -> Any:
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as e:  # not JSON, or nested past what Python parses
            msg = f"{node.key} answered {path} with something not JSON"
            raise NodeRejected(msg, node.key) from e

    async def _json(
        self,
        method: str,
        node: Node,
        path: NodePath,
        *,
        total_s: float | None = None,
        query: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        status, body = await self._exchange(
            method, node, path, self._api_timeout(total_s), query, **kwargs
        )
        if status == 401:
            raise NodeRejected("Unauthorized: wrong node token", node.key)
        if status >= 400:
            raise NodeRejected(f"HTTP {status} from {path}", node.key)
        data = self._decode(node, path, body)
        if isinstance(data, dict) and "error" in data and data.get("success") is not True:
            raise NodeRejected(str(data["error"]), node.key, no_retry=bool(data.get("noRetry")))
        return data

    async def info(self, node: Node) -> NodeInfo:
        data = await self._json("GET", node, paths.fixed("/info"), total_s=self.timeouts.info_s)
        try:
            return NodeInfo.from_json(data)
        except (TypeError, ValueError) as e:
            raise NodeRejected(f"{node.key} sent an unusable /info: {e}", node.key) from e

    async def options(self, node: Node) -> list[dict[str, Any]]:
        data = await self._json("GET", node, paths.fixed("/options"))
        if not isinstance(data, list):
            raise NodeRejected(f"{node.key} sent an unusable /options", node.key)
        return data

    async def get_json(
        self,
        node: Node,
        path: NodePath,
        query: Mapping[str, str] | None = None,
        total_s: float | None = None,
    ) -> Any:
        """Any GET answering JSON; a node's ``{"error"}`` raises NodeRejected."""
        return await self._json("GET", node, path, query=query, total_s=total_s)

    async def task_info(self, node: Node, uuid: str) -> dict[str, Any]:
        data = await self._json("GET", node, paths.task(uuid, "info"))
        if not isinstance(data, dict):
            raise NodeRejected(f"{node.key} sent an unusable task info", node.key)
        return data

    async def init_task(self, node: Node, uuid: str, fields: Mapping[str, str]) -> str:
        """``/task/new/init`` with ``set-uuid`` so the uuid never changes across nodes."""
        form = aiohttp.FormData(default_to_multipart=True)  # NodeODM reads multipart only
        for key, value in fields.items():
            form.add_field(key, value)
        data = await self._json(
            "POST", node, paths.fixed("/task/new/init"), data=form, headers={"set-uuid": uuid}
        )
        if not isinstance(data, dict) or data.get("uuid") != uuid:
            raise NodeRejected(f"{node.key} did not accept uuid {uuid}", node.key)
        return uuid

    async def upload(self, node: Node, uuid: str, path: Path, name: str | None = None) -> None:
        """Send one staged file, streamed from disk, in field ``images``. The name goes out as
        it is, quoted (NodeODM does not undo percent-encoding: ``a b.jpg`` would be kept as
        ``a%20b.jpg``)."""
        form = aiohttp.FormData(quote_fields=False)
        form.add_field(
            "images",
            _file_sender(path, self.rate_limiter),
            filename=name or path.name,
            content_type="application/octet-stream",
        )
        await self._upload(node, uuid, data=form)

    async def upload_body(
        self,
        node: Node,
        uuid: str,
        body: AsyncIterator[bytes],
        content_type: str,
        length: int | None,
    ) -> None:
        """Relay a client's upload request body as it arrives: the same multipart bytes, under
        the same ``Content-Type`` (boundary) and, when known, ``Content-Length``."""
        headers = {"Content-Type": content_type}
        if length is not None:
            headers["Content-Length"] = str(length)
        await self._upload(node, uuid, data=body, headers=headers)

    async def _upload(self, node: Node, uuid: str, **kwargs: Any) -> None:
        path = paths.upload(uuid)
        status, body = await self._exchange("POST", node, path, self.stream_timeout, **kwargs)
        if status != 200:
            raise NodeRejected(f"upload answered HTTP {status}", node.key)
        data = self._decode(node, path, body)
        if not isinstance(data, dict) or data.get("success") is not True:
            err = data.get("error", "upload refused") if isinstance(data, dict) else "refused"
            no_retry = isinstance(data, dict) and bool(data.get("noRetry"))
            raise NodeRejected(str(err), node.key, no_retry=no_retry)

    async def commit(self, node: Node, uuid: str) -> None:
        data = await self._json("POST", node, paths.commit(uuid))
        if not isinstance(data, dict) or data.get("uuid") != uuid:
            raise NodeRejected(f"{node.key} did not commit {uuid}", node.key)

    async def action(
        self, node: Node, action: str, uuid: str, extra: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """cancel / remove / restart: the node's answer as it is (``success`` or ``error``)."""
        form = {"uuid": uuid, **(extra or {})}
        path = paths.task_action(action)
        _, body = await self._exchange("POST", node, path, self._api_timeout(), data=form)
        data = self._decode(node, path, body)
        if not isinstance(data, dict):
            raise NodeRejected(f"{node.key} answered {action} with something unusable")
        return data


async def _file_sender(path: Path, limiter: RateLimiter | None = None) -> AsyncIterator[bytes]:
    """Read a staged file in chunks off the loop; optional shared rate limit."""
    f = await asyncio.to_thread(path.open, "rb")
    try:
        while True:
            chunk = await asyncio.to_thread(f.read, UPLOAD_CHUNK)
            if not chunk:
                break
            if limiter is not None:
                await limiter.acquire(len(chunk))
            yield chunk
    finally:
        await asyncio.to_thread(f.close)


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    return str(e) or type(e).__name__
