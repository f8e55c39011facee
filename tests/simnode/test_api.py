"""Every NodeODM route and error answer, driven with raw aiohttp requests."""

from __future__ import annotations

import json
import uuid as uuidlib

import aiohttp

from clusterodm.simnode import SimNode, TaskStatus
from tests.helpers import eventually

from .conftest import StartNode, create_task, fields_form, get_json, image_form, post_json


async def _done(http: aiohttp.ClientSession, base: str, uuid: str) -> dict:
    async def ended() -> dict | None:
        _, info = await get_json(http, f"{base}/task/{uuid}/info")
        return info if info["status"]["code"] in (30, 40, 50) else None

    return await eventually(ended, timeout_s=10, message="task end")


async def test_info_options_auth_home(node: SimNode, http: aiohttp.ClientSession) -> None:
    status, info = await get_json(http, f"{node.url}/info")
    assert status == 200 and info["version"] == "2.2.4" and info["taskQueueCount"] == 0
    assert info["maxImages"] is None and info["maxParallelTasks"] == 1
    assert (info["engine"], info["engineVersion"]) == ("odm", "?")
    assert set(info) >= {"totalMemory", "availableMemory", "cpuCores"}
    _, options = await get_json(http, f"{node.url}/options")
    assert len(options) == 80 and set(options[0]) == {"name", "type", "value", "domain", "help"}
    _, auth = await get_json(http, f"{node.url}/auth/info")
    assert auth == {
        "message": "Authentication not available on this node",
        "loginUrl": None,
        "registerUrl": None,
    }
    for route in ("login", "register"):
        assert await post_json(http, f"{node.url}/auth/{route}") == (
            200,
            {"error": "Not available"},
        )
    async with http.get(f"{node.url}/") as response:
        assert "NodeODM-compatible simulated node" in await response.text()
    async with http.get(f"{node.url}/info?_debugUnauthorized=1") as response:
        assert response.status == 401


async def test_chunked_task_lifecycle(node: SimNode, http: aiohttp.ClientSession) -> None:
    base = node.url
    uuid = await create_task(http, base, ("a.jpg", "a.jpg", "body.json"))
    _, listed = await get_json(http, f"{base}/task/list")
    assert {"uuid": uuid} in listed
    info = await _done(http, base, uuid)
    assert info["status"] == {"code": 40} and info["progress"] == 100
    assert info["name"] == "t" and info["imagesCount"] == 3  # duplicates are kept
    assert sorted(node.tasks[uuid].images) == ["_body.json", "a.jpg", "a_.jpg"]
    assert info["processingTime"] >= 250
    _, output = await get_json(http, f"{base}/task/{uuid}/output")
    assert output[-1] == "Compressing all.zip\n" and len(output) > 20
    assert (await get_json(http, f"{base}/task/{uuid}/output?line=-2"))[1] == output[-2:]
    assert (await get_json(http, f"{base}/task/{uuid}/output?line=3.7"))[1] == output[3:]
    assert (await get_json(http, f"{base}/task/{uuid}/output?line=9999"))[1] == []
    _, with_output = await get_json(http, f"{base}/task/{uuid}/info?with_output=5")
    assert with_output["output"] == output[5:]
    assert "output" not in info


async def test_single_request_new_and_set_uuid(node: SimNode, http: aiohttp.ClientSession) -> None:
    chosen = str(uuidlib.uuid4())
    form = image_form("x.jpg", "y.jpg")
    form.add_field("options", json.dumps([{"name": "dsm", "value": "true"}]))
    _, body = await post_json(http, f"{node.url}/task/new", data=form, headers={"set-uuid": chosen})
    assert body == {"uuid": chosen}
    info = await _done(http, node.url, chosen)
    assert "name" not in info  # not sent: NodeODM leaves the key out
    assert info["options"][0] == {"name": "dsm", "value": True}
    _, again = await post_json(
        http,
        f"{node.url}/task/new/init",
        data=fields_form(name="x"),
        headers={"set-uuid": chosen},
    )
    assert again == {"error": f"Invalid set-uuid: {chosen}"}
    _, bad = await post_json(
        http,
        f"{node.url}/task/new/init",
        data=fields_form(name="x"),
        headers={"set-uuid": "not-a-uuid"},
    )
    assert bad == {"error": "Invalid set-uuid: not-a-uuid"}


async def test_creation_errors(start_node: StartNode, http: aiohttp.ClientSession) -> None:
    node = await start_node(test_seconds=0.2, max_images=2)
    base = node.url
    missing = str(uuidlib.uuid4())
    assert (await post_json(http, f"{base}/task/new/upload/{missing}", data=image_form("a.jpg")))[
        1
    ] == {"error": "Invalid uuid (not found)"}
    assert (await post_json(http, f"{base}/task/new/commit/{missing}"))[1] == {
        "error": "Invalid uuid (not found)"
    }
    bad_options = fields_form(options=json.dumps([{"name": "feature-type", "value": "foo"}]))
    _, body = await post_json(http, f"{base}/task/new/init", data=bad_options)
    assert json.loads(body["error"]) == [
        {"name": "feature-type", "error": "Invalid value foo (not in enum)"}
    ]
    _, body = await post_json(http, f"{base}/task/new/init", data=fields_form(options="[{"))
    assert "JSON" in body["error"]
    # init, then upload with no file, then a file in the wrong field
    _, body = await post_json(http, f"{base}/task/new/init", data=fields_form(name=""))
    uuid = body["uuid"]
    empty = fields_form(field="value")
    _, body = await post_json(http, f"{base}/task/new/upload/{uuid}", data=empty)
    assert body == {"error": "Need at least 1 file.", "noRetry": True}
    wrong = aiohttp.FormData()
    wrong.add_field("photos", b"x", filename="a.jpg")
    _, body = await post_json(http, f"{base}/task/new/upload/{uuid}", data=wrong)
    assert body == {"error": "Unexpected field"}
    assert (await post_json(http, f"{base}/task/new/commit/{uuid}"))[1] == {
        "error": "Need at least 1 file."
    }
    # too many images: refused up front by /task/new, a FAILED task after a chunked commit
    _, body = await post_json(http, f"{base}/task/new", data=image_form("1.jpg", "2.jpg", "3.jpg"))
    assert body == {"error": "3 images uploaded, but this node can only process up to 2."}
    uuid = await create_task(http, base, ("1.jpg", "2.jpg", "3.txt"))
    info = await _done(http, base, uuid)
    assert info["status"] == {
        "code": 30,
        "errorMessage": "3 images uploaded, but this node can only process up to 2.",
    }
    assert (await post_json(http, f"{base}/task/new/upload/{uuid}", data=image_form("4.jpg")))[
        1
    ] == {"error": "Invalid uuid (not found)"}  # upload after commit
    _, body = await post_json(http, f"{base}/task/new", data=fields_form(name="n"))
    assert body == {"error": "Need at least 1 file or a zip file url."}
    async with http.post(
        f"{base}/task/new/upload/{uuid}",
        data=b"--zz\r\ngarbage",
        headers={"Content-Type": "multipart/form-data; boundary=zz"},
    ) as response:
        assert "error" in await response.json()


async def test_unknown_uuid_and_asset(node: SimNode, http: aiohttp.ClientSession) -> None:
    ghost = str(uuidlib.uuid4())
    for path in ("info", "output", "download/all.zip"):
        assert (await get_json(http, f"{node.url}/task/{ghost}/{path}"))[1] == {
            "error": f"{ghost} not found"
        }
    for action in ("cancel", "remove", "restart"):
        _, body = await post_json(http, f"{node.url}/task/{action}", data={"uuid": ghost})
        assert body == {"success": False, "error": f"{ghost} not found"}
        _, body = await post_json(http, f"{node.url}/task/{action}", json={})
        assert body == {"error": "uuid param missing."}
    node.config.test_seconds = 5
    uuid = await create_task(http, node.url)
    _, body = await get_json(http, f"{node.url}/task/{uuid}/download/orthophoto.tif")
    assert body == {"error": "Invalid asset"}
    _, body = await get_json(http, f"{node.url}/task/{uuid}/download/all.zip")
    assert body == {"error": "Asset not ready"}
    _, body = await post_json(http, f"{node.url}/task/restart", data={"uuid": uuid})
    assert body == {"success": False, "error": "Task cannot be restarted"}
    _, body = await post_json(
        http, f"{node.url}/task/restart", data={"uuid": uuid, "options": "{oops"}
    )
    assert "error" in body and "success" not in body


async def test_token(start_node: StartNode, http: aiohttp.ClientSession) -> None:
    node = await start_node(token="secret")
    denied = {"error": "Invalid authentication token: token does not match."}
    assert await get_json(http, f"{node.url}/info") == (200, denied)
    assert await get_json(http, f"{node.url}/info?token=nope") == (200, denied)
    assert (await get_json(http, f"{node.url}/task/list?token=wrong"))[1] == denied
    _, info = await get_json(http, f"{node.url}/info?token=secret")
    assert info["version"] == "2.2.4"
    assert (await get_json(http, f"{node.url}/auth/info"))[1]["loginUrl"] is None
    uuid = await create_task(http, node.url, query="?token=secret")
    assert uuid in node.tasks


async def test_cors_and_not_found(node: SimNode, http: aiohttp.ClientSession) -> None:
    async with http.options(
        f"{node.url}/task/new/init", headers={"Access-Control-Request-Headers": "set-uuid"}
    ) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Methods"] == "GET,HEAD,PUT,PATCH,POST,DELETE"
        assert response.headers["Access-Control-Allow-Headers"] == "set-uuid"
        assert response.headers["Access-Control-Allow-Origin"] == "*"
    async with http.get(f"{node.url}/info") as response:
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    async with http.get(f"{node.url}/no/such/route") as response:
        assert response.status == 404
        assert "<pre>Cannot GET /no/such/route</pre>" in await response.text()
    async with http.post(f"{node.url}/info") as response:
        assert response.status == 404 and "Cannot POST /info" in await response.text()


async def test_status_codes_enum() -> None:
    assert [s.value for s in TaskStatus] == [10, 20, 30, 40, 50]
