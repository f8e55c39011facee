"""Fixtures: real simnodes on 127.0.0.1, port 0, and one aiohttp client session per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from clusterodm.simnode import SimNode, SimNodeConfig, start_simnode

StartNode = Callable[..., Awaitable[SimNode]]


@pytest.fixture
async def start_node() -> AsyncIterator[StartNode]:
    """Start simnodes with SimNodeConfig keywords; all are stopped after the test."""
    nodes: list[SimNode] = []

    async def start(**settings: Any) -> SimNode:
        node = await start_simnode(SimNodeConfig(**settings))
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.stop()


@pytest.fixture
async def node(start_node: StartNode) -> SimNode:
    return await start_node(test_seconds=0.3)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


def fields_form(**fields: str) -> aiohttp.FormData:
    """A multipart body of text fields (NodeODM reads init fields from multipart only)."""
    form = aiohttp.FormData(default_to_multipart=True)
    for key, value in fields.items():
        form.add_field(key, value)
    return form


def image_form(*names: str, size: int = 100) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for name in names:
        form.add_field("images", bytes(size), filename=name, content_type="image/jpeg")
    return form


async def post_json(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.post(url, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def get_json(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    async with http.get(url, **kwargs) as response:
        return response.status, await response.json(content_type=None)


async def create_task(
    http: aiohttp.ClientSession,
    base: str,
    names: tuple[str, ...] = ("a.jpg", "b.jpg"),
    fields: dict[str, str] | None = None,
    query: str = "",
) -> str:
    """Chunked creation as pyodm does it: init, one upload per file, commit; returns the uuid."""
    form = fields_form(**(fields or {"name": "t", "options": "[]"}))
    _, body = await post_json(http, f"{base}/task/new/init{query}", data=form)
    uuid = body["uuid"]
    for name in names:
        _, body = await post_json(
            http, f"{base}/task/new/upload/{uuid}{query}", data=image_form(name)
        )
        assert body == {"success": True}
    _, body = await post_json(http, f"{base}/task/new/commit/{uuid}{query}")
    assert body == {"uuid": uuid}
    return uuid
