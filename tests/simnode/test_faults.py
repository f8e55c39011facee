"""Fault knobs for the cluster's tests: hang, garbage, dropped uploads."""

from __future__ import annotations

import aiohttp
import pytest

from clusterodm.simnode import SimNode

from .conftest import StartNode, fields_form, image_form, post_json


async def test_hang_until_released(node: SimNode, http: aiohttp.ClientSession) -> None:
    node.config.hang = True
    with pytest.raises(TimeoutError):
        async with http.get(f"{node.url}/info", timeout=aiohttp.ClientTimeout(total=0.3)):
            pass
    node.config.hang = False
    async with http.get(f"{node.url}/info") as response:
        assert (await response.json())["version"] == "2.2.4"


async def test_hanging_node_stops(start_node: StartNode, http: aiohttp.ClientSession) -> None:
    node = await start_node(hang=True)
    with pytest.raises(TimeoutError):
        async with http.get(f"{node.url}/info", timeout=aiohttp.ClientTimeout(total=0.2)):
            pass
    await node.stop()
    assert not node.temp_dir.exists()


async def test_garbage(node: SimNode, http: aiohttp.ClientSession) -> None:
    node.config.garbage = True
    async with http.get(f"{node.url}/info") as response:
        assert response.status == 200
        with pytest.raises(ValueError):
            await response.json(content_type=None)


async def test_drop_uploads_after(start_node: StartNode, http: aiohttp.ClientSession) -> None:
    node = await start_node(drop_uploads_after=2)
    _, body = await post_json(http, f"{node.url}/task/new/init", data=fields_form(name="d"))
    url = f"{node.url}/task/new/upload/{body['uuid']}"
    statuses = []
    for i in range(4):
        async with http.post(url, data=image_form(f"{i}.jpg")) as response:
            statuses.append(response.status)
    assert statuses == [200, 200, 500, 500]
    assert node.upload_requests == 4


async def test_test_drop_uploads(start_node: StartNode, http: aiohttp.ClientSession) -> None:
    node = await start_node(test_drop_uploads=True)
    _, body = await post_json(http, f"{node.url}/task/new/init", data=fields_form(name="d"))
    url = f"{node.url}/task/new/upload/{body['uuid']}"
    answers = []
    for i in range(4):
        async with http.post(url, data=image_form(f"{i}.jpg")) as response:
            answers.append((response.status, await response.text()))
    assert answers.count((500, "Internal Server Error")) == 2
    assert sum(status == 200 for status, _ in answers) == 2
