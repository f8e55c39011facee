"""Streaming ``all.zip`` with HTTP Range support.

Original NodeODM: no ``Accept-Ranges``, ``Range`` ignored. Here: single byte ranges are
honoured (206, ``Content-Range``; 416 when unsatisfiable), as a real file server would, so
pyodm's parallel ranged download and resumable clients can be exercised.
"""

from __future__ import annotations

import re

from aiohttp import web

from .zipgen import ZipImage

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK_BYTES = 1024 * 1024


class RangeNotSatisfiable(ValueError):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, stop)`` of a single-range ``Range`` header; None means the whole file.

    Malformed or multi-range headers are ignored (whole file), as RFC 9110 allows.
    """
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return max(0, size - suffix), size
    start = int(first)
    stop = size if not last else min(int(last) + 1, size)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable(header)
    return start, stop


async def send_zip(request: web.Request, image: ZipImage) -> web.StreamResponse:
    """Answer GET/HEAD for a task's all.zip, whole or one range, streamed in 1 MiB chunks."""
    headers = {
        "Content-Disposition": "attachment; filename=all.zip",
        "Content-Type": "application/zip",
        "Accept-Ranges": "bytes",
    }
    try:
        wanted = parse_range(request.headers.get("Range"), image.size)
    except RangeNotSatisfiable:
        headers["Content-Range"] = f"bytes */{image.size}"
        del headers["Content-Disposition"]
        return web.Response(status=416, headers=headers)
    start, stop = wanted if wanted is not None else (0, image.size)
    response = web.StreamResponse(status=200 if wanted is None else 206, headers=headers)
    if wanted is not None:
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{image.size}"
    response.content_length = stop - start
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    try:
        for chunk in image.iter_range(start, stop, _CHUNK_BYTES):
            await response.write(chunk)
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away (e.g. pyodm's ranged threads stopping early)
    return response
