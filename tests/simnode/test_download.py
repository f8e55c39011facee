"""all.zip: valid archive, Range and HEAD, large generated sizes with consistent bytes."""

from __future__ import annotations

import hashlib
import io
import zipfile
from datetime import datetime

import aiohttp

from clusterodm.simnode import TaskStatus
from clusterodm.simnode.download import RangeNotSatisfiable, parse_range
from clusterodm.simnode.engine import result_members
from clusterodm.simnode.zipgen import build_zip
from tests.helpers import eventually

from .conftest import StartNode, create_task


def test_parse_range_table() -> None:
    size = 1000
    table = {
        None: None,
        "bytes=0-99": (0, 100),
        "bytes=900-": (900, 1000),
        "bytes=-100": (900, 1000),
        "bytes=-5000": (0, 1000),
        "bytes=990-5000": (990, 1000),
        "bytes=0-1,5-6": None,  # several ranges: whole file
        "items=0-1": None,
        "bytes=50-10": None,
    }
    for header, expected in table.items():
        assert parse_range(header, size) == expected, header
    for header in ("bytes=1000-", "bytes=-0"):
        try:
            parse_range(header, size)
        except RangeNotSatisfiable:
            continue
        raise AssertionError(header)


def test_default_zip_extracts_with_task_output() -> None:
    output = ["line one", "line two"]
    image = build_zip(result_members(output, ["a.jpg"]), datetime(2024, 5, 1, 12, 0))
    data = image.read_all()
    assert len(data) == image.size and 500_000 < image.size < 2_000_000
    with zipfile.ZipFile(io.BytesIO(data)) as zipped:
        assert zipped.testzip() is None
        assert zipped.read("task_output.txt") == b"line one\nline two"
        assert "odm_orthophoto/odm_orthophoto.tif" in zipped.namelist()


def test_outputs_select_members() -> None:
    members = result_members([], ["a.jpg"], outputs=["odm_dem", "../images.json"])
    assert sorted(m.name for m in members) == ["images.json", "odm_dem/dsm.tif", "odm_dem/dtm.tif"]


async def test_large_zip_range_and_head(start_node: StartNode, http: aiohttp.ClientSession) -> None:
    size = 50_000_000
    node = await start_node(zip_size=size)
    uuid = await create_task(http, node.url)
    await eventually(lambda: node.tasks[uuid].status == TaskStatus.COMPLETED, message="done")
    url = f"{node.url}/task/{uuid}/download/all.zip"
    digest = hashlib.sha256()
    async with http.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(size)
        assert response.headers["Accept-Ranges"] == "bytes"
        assert response.headers["Content-Disposition"] == "attachment; filename=all.zip"
        assert response.headers["Content-Type"] == "application/zip"
        head = b""
        tail_window = b""
        received = 0
        async for chunk in response.content.iter_chunked(1 << 20):
            digest.update(chunk)
            if len(head) < 100:
                head += chunk[: 100 - len(head)]
            tail_window = (tail_window + chunk)[-5000:]
            middle_start = 31_234_567
            if received <= middle_start < received + len(chunk):
                middle_byte = chunk[middle_start - received]
            received += len(chunk)
    assert received == size
    checks = {
        "bytes=0-99": (head, f"bytes 0-99/{size}"),
        "bytes=-5000": (tail_window, f"bytes {size - 5000}-{size - 1}/{size}"),
        f"bytes={middle_start}-{middle_start}": (
            bytes([middle_byte]),
            f"bytes {middle_start}-{middle_start}/{size}",
        ),
    }
    for header, (expected, content_range) in checks.items():
        async with http.get(url, headers={"Range": header}) as response:
            assert response.status == 206
            assert response.headers["Content-Range"] == content_range
            assert await response.read() == expected
    async with http.get(url, headers={"Range": f"bytes={size}-"}) as response:
        assert response.status == 416
        assert response.headers["Content-Range"] == f"bytes */{size}"
    async with http.head(url) as response:
        assert response.status == 200 and response.headers["Content-Length"] == str(size)
    again = hashlib.sha256()
    async with http.get(url) as response:
        async for chunk in response.content.iter_chunked(1 << 20):
            again.update(chunk)
    assert again.hexdigest() == digest.hexdigest()
