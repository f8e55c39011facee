"""Upload client, run as its own process: a task of N images, as pyodm sends it.

``/task/new/init``, then every image in its own ``/task/new/upload`` request (``--parallel``
at once, pyodm's default is 10), ``/task/new/commit``, then polls ``/task/<uuid>/info`` until the
task runs on a node: on ``--node`` when given (the cluster keeps the uuid on the node). Prints
JSON: seconds from the first upload byte to the first answer showing the task RUNNING (or
already COMPLETED), the upload's share of it, and the client's own CPU time. The task is then
removed (not timed).

The uploads are written by a lean sender (``RawUploads``): keep-alive connections, each request
a pre-built head and multipart framing around the same image bytes, written without copying
them. The client shares the machine with the node (and the cluster), so the CPU it burns is
taken from them: during the timed part aiohttp's client spent about 0.31 s of CPU on 400 MB,
this one about 0.20 s (``--sender aiohttp`` keeps the old way, for comparison).

    python -m bench.upload URL --images 200 --size 2000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.parse
from typing import Any

import aiohttp

RUNNING, FAILED, COMPLETED, CANCELED = 20, 30, 40, 50


BOUNDARY = "benchuploadboundary7d3f9e2a"


class RawUploads:
    """``POST /task/new/upload/<uuid>`` requests over up to ``parallel`` keep-alive
    connections, each a pre-built head, the multipart framing and the image bytes handed to
    one ``writelines`` (no copy in Python). Answers must carry a Content-Length, as every
    aiohttp server's JSON answer does, or be chunked."""

    def __init__(self, url: str, query: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        self.base = parsed.path.rstrip("/")
        self.query = query
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def upload(self, uuid: str, filename: str, body: bytes) -> Any:
        preamble = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; '
            f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        closing = f"\r\n--{BOUNDARY}--\r\n".encode()
        length = len(preamble) + len(body) + len(closing)
        target = f"{self.base}/task/new/upload/{uuid}{self.query}"
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {length}\r\n\r\n"
        ).encode()
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.writelines([head, preamble, body, closing])
        await writer.drain()
        status_line = await reader.readline()
        length = None
        chunked = False
        keep_alive = True
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True  # the original ClusterODM's answers
            elif name.strip().lower() == "connection" and "close" in value.lower():
                keep_alive = False
        if not status_line.startswith(b"HTTP/1.1 ") or (length is None and not chunked):
            raise RuntimeError(f"unexpected answer to an upload: {status_line!r}")
        if length is not None:
            answer = json.loads(await reader.readexactly(length))
        else:
            answer = json.loads(await _read_chunked(reader))
        if keep_alive:
            self.idle.append((reader, writer))
        else:
            writer.close()
        return answer

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while size := int((await reader.readline()).split(b";")[0], 16):
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    while (await reader.readline()) not in (b"\r\n", b""):  # trailers
        pass
    return bytes(body)


async def run_upload(
    url: str,
    images: int,
    size: int,
    parallel: int,
    token: str,
    node: str | None = None,
    sender: str = "raw",
) -> dict[str, Any]:
    """``node``: where the task will run, polled there (a cluster answers RUNNING for a task it
    still holds, before any node has it)."""
    query = {"token": token} if token else {}
    node_query = {} if node else query
    poll_url = node or url
    body = b"\xff\xd8\xff\xe0" + os.urandom(size - 4)
    connector = aiohttp.TCPConnector(limit=parallel + 2)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("name", "bench upload")
        async with http.post(f"{url}/task/new/init", data=form, params=query) as response:
            answer = await response.json(content_type=None)
        uuid = answer.get("uuid")
        if not uuid:
            raise RuntimeError(f"init refused: {answer}")
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(images):
            queue.put_nowait(i)

        raw = RawUploads(url, "?" + urllib.parse.urlencode(query) if query else "")

        async def send(filename: str) -> Any:
            if sender == "raw":
                return await raw.upload(uuid, filename, body)
            data = aiohttp.FormData()
            data.add_field("images", body, filename=filename, content_type="image/jpeg")
            async with http.post(
                f"{url}/task/new/upload/{uuid}", data=data, params=query
            ) as response:
                return await response.json(content_type=None)

        async def uploader() -> None:
            while not queue.empty():
                reply = await send(f"IMG_{queue.get_nowait():04d}.JPG")
                if reply != {"success": True}:
                    raise RuntimeError(f"upload refused: {reply}")

        cpu_before = time.process_time()
        started = time.monotonic()
        await asyncio.gather(*(uploader() for _ in range(parallel)))
        uploaded = time.monotonic()
        await raw.close()
        async with http.post(f"{url}/task/new/commit/{uuid}", params=query) as response:
            reply = await response.json(content_type=None)
        if reply.get("uuid") != uuid:
            raise RuntimeError(f"commit refused: {reply}")
        committed = time.monotonic()
        polls = 0
        while True:
            async with http.get(f"{poll_url}/task/{uuid}/info", params=node_query) as response:
                info = await response.json(content_type=None)
            polls += 1
            code = (info.get("status") or {}).get("code")
            if code in (RUNNING, COMPLETED):
                break
            if code in (FAILED, CANCELED) or ("error" in info and not node):
                raise RuntimeError(f"task did not start: {info}")
            if time.monotonic() - started > 1800:
                raise RuntimeError("task did not start within 30 minutes")
            await asyncio.sleep(0.02)
        running = time.monotonic()
        cpu_s = time.process_time() - cpu_before
        # Not timed: remove the task, so that every run meets a node (and a cluster) in the same
        # state; tasks left running would make each later run slower than the one before.
        async with http.post(f"{url}/task/remove", data={"uuid": uuid}, params=query) as response:
            await response.read()
    return {
        "uuid": uuid,
        "images": images,
        "bytes": images * size,
        "seconds": running - started,
        "upload_s": uploaded - started,
        "commit_s": committed - uploaded,
        "to_running_s": running - committed,
        "polls": polls,
        "client_cpu_s": cpu_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=2_000_000)
    parser.add_argument("--parallel", type=int, default=10)
    parser.add_argument("--token", default="")
    parser.add_argument("--node", default=None, help="poll the task here (the node it runs on)")
    parser.add_argument(
        "--sender", choices=("raw", "aiohttp"), default="raw", help="how uploads are written"
    )
    args = parser.parse_args(argv)
    node = args.node.rstrip("/") if args.node else None
    result = asyncio.run(
        run_upload(
            args.url.rstrip("/"),
            args.images,
            args.size,
            args.parallel,
            args.token,
            node,
            args.sender,
        )
    )
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
