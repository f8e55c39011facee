"""Load generator: keep-alive HTTP/1.1 GETs from many connections, run as its own process.

A deliberately small client (an asyncio ``Protocol`` per connection, uvloop when installed) so
that the generator costs far less per request than the aiohttp servers it measures. Each
connection sends a request, waits for the whole answer, records its latency and sends the next.

    python -m bench.loadgen get URL [URL ...] --concurrency 64 --seconds 5
    python -m bench.loadgen get URL --concurrency 1 --requests 2000      # latency run
    python -m bench.loadgen download URL                                   # MB/s of one GET
    python -m bench.loadgen null                                           # fixed-answer server

It prints one JSON object on stdout. An answer counts as an error when its status is not 200 or
its body holds an ``"error"`` key (NodeODM answers errors with status 200).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from typing import Any, cast
from urllib.parse import urlsplit

_LATENCY_SAMPLES = 200_000


def install_uvloop() -> str:
    """Use uvloop when it is installed; answers the loop's name."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def _split(url: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    request = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench\r\n\r\n"
    return host, port, request.encode()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; ``fetch`` sends a request and resolves with (status, body)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        with contextlib.suppress(OSError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def fetch(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.buffer.clear()
        self.transport.write(request)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        answer = _parse(self.buffer)
        if answer is not None and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(answer)


def _parse(buffer: bytearray) -> tuple[int, bytes] | None:
    """A complete answer in ``buffer``: (status, body); None while more is needed."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    length: int | None = None
    chunked = False
    for line in head[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    start = end + 4
    if length is not None:
        if len(buffer) - start < length:
            return None
        return status, bytes(buffer[start : start + length])
    if chunked:
        if not buffer.endswith(b"0\r\n\r\n"):
            return None
        return status, _dechunk(bytes(buffer[start:]))
    return status, b""


def _dechunk(raw: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        eol = raw.index(b"\r\n", pos)
        size = int(raw[pos:eol].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += raw[eol + 2 : eol + 2 + size]
        pos = eol + 2 + size + 2


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


async def _connect(host: str, port: int) -> _Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(_Connection, host, port)
    return protocol


async def run_get(
    urls: list[str], concurrency: int, seconds: float | None, requests: int | None
) -> dict[str, Any]:
    """``concurrency`` connections, each polling ``urls`` in turn, for ``seconds`` or
    ``requests`` answers in all; latencies in ms (a sample when there are very many)."""
    targets = [_split(u) for u in urls]
    host, port, _ = targets[0]
    count = errors = 0
    latencies: list[float] = []
    error_samples: list[str] = []
    deadline = time.monotonic() + seconds if seconds is not None else None
    remaining = requests

    async def worker(index: int) -> None:
        nonlocal count, errors, remaining
        conn: _Connection | None = None
        i = index
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                return
            if remaining is not None:
                if remaining <= 0:
                    return
                remaining -= 1
            request = targets[i % len(targets)][2]
            i += concurrency
            started = time.perf_counter()
            try:
                if conn is None or conn.closed:
                    conn = await _connect(host, port)
                status, body = await conn.fetch(request)
            except (OSError, ConnectionError) as e:
                errors += 1
                conn = None
                if len(error_samples) < 5:
                    error_samples.append(repr(e))
                await asyncio.sleep(0.01)
                continue
            elapsed_ms = (time.perf_counter() - started) * 1000
            if status != 200 or b'"error"' in body:
                errors += 1
                if len(error_samples) < 5:
                    error_samples.append(f"{status} {body[:200]!r}")
            else:
                count += 1
            if len(latencies) < _LATENCY_SAMPLES:
                latencies.append(elapsed_ms)

    cpu0, wall0 = _cpu_s(), time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    wall = time.monotonic() - wall0
    cpu = _cpu_s() - cpu0
    latencies.sort()
    return {
        "requests": count,
        "errors": errors,
        "error_samples": error_samples,
        "seconds": wall,
        "requests_per_s": count / wall if wall else 0.0,
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
        "generator_cpu": cpu / wall if wall else 0.0,
    }


def _percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, round(pct / 100 * (len(values) - 1)))
    return values[index]


def run_download(url: str) -> dict[str, Any]:
    """One GET read to the end into a reused buffer (plain sockets: as cheap as reading gets)."""
    host, port, request = _split(url)
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    started = time.monotonic()
    with socket.create_connection((host, port)) as sock:
        sock.sendall(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the headers")
            head += chunk
        header, _, rest = head.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        length = None
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        received = len(rest)
        while length is None or received < length:
            n = sock.recv_into(view)
            if n == 0:
                break
            received += n
    elapsed = time.monotonic() - started
    return {
        "status": status,
        "bytes": received,
        "expected": length,
        "seconds": elapsed,
        "mb_per_s": received / elapsed / 1e6,
    }


class _NullServer(asyncio.Protocol):
    """Answers every request with the same small JSON body: the generator's own ceiling."""

    BODY = b'{"uuid":"0","status":{"code":40}}'
    ANSWER = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(BODY)).encode()
        + b"\r\n\r\n"
        + BODY
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.transport.write(self.ANSWER)


async def serve_null() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_NullServer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"null server listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    get = sub.add_parser("get")
    get.add_argument("urls", nargs="+")
    get.add_argument("--concurrency", type=int, default=64)
    get.add_argument("--seconds", type=float, default=None)
    get.add_argument("--requests", type=int, default=None)
    down = sub.add_parser("download")
    down.add_argument("url")
    sub.add_parser("null")
    args = parser.parse_args(argv)
    loop_name = install_uvloop()
    if args.mode == "null":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_null())
        return 0
    if args.mode == "download":
        result = run_download(args.url)
    else:
        if args.seconds is None and args.requests is None:
            parser.error("give --seconds or --requests")
        result = asyncio.run(run_get(args.urls, args.concurrency, args.seconds, args.requests))
    result["loop"] = loop_name
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
