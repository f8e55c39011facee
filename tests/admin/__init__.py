"""Tests of the admin fronts; ``TelnetClient`` talks to the CLI over a real TCP connection."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import FormData

from clusterodm.app import Cluster
from tests.helpers import eventually

IO_TIMEOUT_S = 10.0


class TelnetClient:
    """A line client for the admin CLI: send a command, read up to the next prompt."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, prompt: bytes = b"#> ") -> tuple[TelnetClient, str]:
        """Open a connection; returns the client and the greeting (without the prompt)."""
        async with asyncio.timeout(IO_TIMEOUT_S):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        return client, await client.until(prompt)

    async def until(self, prompt: bytes = b"#> ") -> str:
        async with asyncio.timeout(IO_TIMEOUT_S):
            data = await self.reader.readuntil(prompt)
        return data[: -len(prompt)].decode("utf-8")

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str, prompt: bytes = b"#> ") -> list[str]:
        """Run one command; its reply lines (CRLF-terminated on the wire, checked here)."""
        await self.send(line.encode("utf-8") + b"\r\n")
        text = await self.until(prompt)
        assert text == "" or text.endswith("\r\n"), repr(text)
        return text.split("\r\n")[:-1]

    async def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        async with asyncio.timeout(IO_TIMEOUT_S):
            return await self.reader.read()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


async def make_task(cluster: Cluster, images: int = 2) -> str:
    """Create a task through the proxy and wait until it is routed to a node."""
    form = FormData()
    form.add_field("name", "survey <b>north</b>")
    for i in range(images):
        form.add_field("images", b"x" * 100, filename=f"i{i}.jpg")
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{cluster.url}/task/new", data=form)
        uuid = (await r.json())["uuid"]
    await eventually(lambda: cluster.deps.routes.get(uuid) is not None, timeout_s=10)
    return str(uuid)
