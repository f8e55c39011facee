"""Streaming forwarder: a client request to a node and the node's answer back, both streamed.

The client's ``token`` is replaced by the node token; hop-by-hop headers are dropped both ways.
Small answers (polls) are read whole and sent in one piece, which is cheaper than streaming;
large ones (``all.zip``) stream with flat memory, and ``Range`` passes through untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from clusterodm.errors import NodeUnreachable
from clusterodm.model import Node
from clusterodm.nodes.client import NodeClient

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
#: how much of a streamed answer may wait in the proxy before the node is paused
READ_BUFFER = 1 << 20


def _response_headers(upstream: Mapping[str, str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in upstream.items():
        lk = k.lower()
        if lk not in HOP_BY_HOP and not lk.startswith("access-control-"):
            out.add(k, v)
    return out


async def forward(
    request: web.Request,
    client: NodeClient,
    node: Node,
    path: str,
    *,
    with_body: bool = False,
) -> web.StreamResponse:
    """Send ``request`` to ``node`` at ``path`` and relay the answer."""
    headers = {k: v for k, v in request.headers.items() if k.lower() in REQUEST_HEADERS}
    url = client.url(node, path, request.query)
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
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        raise NodeUnreachable(f"Node {node.key} is not reachable ({e or type(e).__name__})") from e
    try:
        length = upstream.content_length
        if request.method == "HEAD" or (length is not None and length <= SMALL_BODY):
            body = await upstream.read()
            resp = web.Response(
                status=upstream.status, body=body, headers=_response_headers(upstream.headers)
            )
            if request.method == "HEAD" and length is not None:
                resp.headers["Content-Length"] = str(length)
            return resp
        stream = web.StreamResponse(
            status=upstream.status, headers=_response_headers(upstream.headers)
        )
        if length is not None:
            stream.content_length = length
        await stream.prepare(request)
        try:
            # chunks as they arrived, never joined into bigger ones (no extra copy)
            async for chunk, _ in upstream.content.iter_chunks():
                await stream.write(chunk)
        except (aiohttp.ClientError, TimeoutError) as e:
            # The stream has started: nothing sensible can be sent now but a broken connection.
            log.warning("stream from %s broke: %s", node.key, e)
            if request.transport is not None:
                request.transport.close()
            return stream
        await stream.write_eof()
        return stream
    except (aiohttp.ClientError, TimeoutError) as e:
        raise NodeUnreachable(f"Node {node.key} broke off ({e or type(e).__name__})") from e
    finally:
        upstream.release()
