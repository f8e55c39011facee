"""Form posts as curl and scripts send them (#14, defect 2): urlencoded fields are read and
checked exactly as multipart ones, any other body type is refused with a clear error."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ClusterFactory
from tests.helpers import eventually

BAD_VALUE = [{"name": "orthophoto-resolution", "value": "abc"}]
#: the real NodeODM's and the original's words for BAD_VALUE
OUT_OF_RANGE = '[{"name":"orthophoto-resolution","error":"Invalid value NaN (out of range)"}]'
OPTIONS = [{"name": "dsm", "value": True}, {"name": "orthophoto-resolution", "value": 4}]


async def curl(*args: str) -> Any:
    """Run the ``curl`` binary and parse its JSON answer."""
    if shutil.which("curl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is not installed (apt-get install curl)")
        pytest.skip("curl is not installed")
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-m", "20", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out
    return json.loads(out)


async def test_urlencoded_init_keeps_every_field(
    node_factory, cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    node = await node_factory(test_seconds=1)
    cluster = await cluster_factory(nodes=[node])
    url = cluster.url
    created = 1_600_000_000_000
    init = await curl(
        f"{url}/task/new/init",
        "-d", "name=form post",
        "--data-urlencode", f"options={json.dumps(OPTIONS)}",
        "-d", "skipPostProcessing=true",
        "-d", f"dateCreated={created}",
    )  # fmt: skip
    uuid = init["uuid"]
    images = []
    for i in range(2):
        p = tmp_path / f"f{i}.jpg"
        p.write_bytes(bytes([i + 1]) * 5000)
        images.append(p)
    uploaded = await curl(
        f"{url}/task/new/upload/{uuid}", *(a for p in images for a in ("-F", f"images=@{p}"))
    )
    assert uploaded == {"success": True}
    assert await curl("-X", "POST", f"{url}/task/new/commit/{uuid}") == {"uuid": uuid}

    async with aiohttp.ClientSession() as s:

        async def info() -> dict[str, Any] | None:
            async with s.get(f"{url}/task/{uuid}/info") as r:
                body: dict[str, Any] = await r.json()
                return body if body.get("status", {}).get("code") == 40 else None

        done = await eventually(info, timeout_s=40, interval_s=0.2, message="task completed")
    assert done["name"] == "form post"
    assert done["dateCreated"] == created
    assert done["imagesCount"] == 2
    got = {o["name"]: o["value"] for o in done["options"]}
    assert got["dsm"] is True and got["orthophoto-resolution"] == 4
    if node.kind == "real":
        assert node.images(uuid) == ["f0.jpg", "f1.jpg"]


async def test_urlencoded_fields_are_checked_as_multipart_ones(
    node_factory, cluster_factory: ClusterFactory
) -> None:
    node = await node_factory(test_seconds=1)
    cluster = await cluster_factory(nodes=[node])
    url = cluster.url
    for path in ("/task/new/init", "/task/new"):
        for flag in ("-d", "-F"):  # urlencoded, then multipart: the same answers
            bad = await curl(f"{url}{path}", flag, "name=x", flag, "options=bad")
            zipurl = await curl(f"{url}{path}", flag, "zipurl=http://127.0.0.1:1/a.zip")
            out_of_range = await curl(f"{url}{path}", flag, f"options={json.dumps(BAD_VALUE)}")
            assert "zipurl" in zipurl["error"]
            if path == "/task/new/init":
                # the original's words (V8's JSON.parse)
                assert bad == {"error": "Unexpected token b in JSON at position 0"}
                assert out_of_range == {"error": OUT_OF_RANGE}
            else:  # no files: refused before the options are looked at, both ways
                assert bad == {"error": "Need at least 1 file or a zip file url."}


async def test_other_body_types_get_a_clear_error(
    simnode_factory, cluster_factory: ClusterFactory
) -> None:
    cluster = await cluster_factory(nodes=[await simnode_factory()])
    for path in ("/task/new/init", "/task/new"):
        for kind, body in (("application/json", '{"name": "x"}'), ("text/plain", "name=x")):
            answer = await curl(f"{cluster.url}{path}", "-H", f"Content-Type: {kind}", "-d", body)
            assert answer["error"].startswith(f"Unsupported Content-Type {kind}")
            assert "multipart/form-data" in answer["error"]
    # a POST without any body has no field to lose: an init with the defaults
    assert "uuid" in await curl("-X", "POST", f"{cluster.url}/task/new/init")
    empty = ("-H", "Content-Type: application/octet-stream", "-d", "")
    assert "uuid" in await curl(*empty, f"{cluster.url}/task/new/init")


async def test_urlencoded_body_is_bounded(simnode_factory, cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory(nodes=[await simnode_factory()])
    async with aiohttp.ClientSession() as s:
        huge = {"name": "x", "options": "[" + " " * (5 << 20) + "]"}
        async with s.post(f"{cluster.url}/task/new/init", data=huge) as r:
            assert (await r.json())["error"].startswith("Form too large")
        many = {f"f{i}": "1" for i in range(500)}
        async with s.post(f"{cluster.url}/task/new/init", data=many) as r:
            assert "more than" in (await r.json())["error"]
