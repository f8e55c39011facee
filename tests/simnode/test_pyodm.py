"""pyodm against a simnode: the client WebODM and scripts use must not tell the difference."""

from __future__ import annotations

import asyncio
import os
import zipfile
from pathlib import Path

import pytest
from pyodm import Node
from pyodm.exceptions import TaskFailedError
from pyodm.types import TaskStatus as PyodmStatus

from clusterodm.simnode import SimNode

from .conftest import StartNode


def _images(folder: Path, count: int = 3) -> list[str]:
    paths = []
    for i in range(count):
        path = folder / f"DJI_{i:04d}.JPG"
        path.write_bytes(os.urandom(2048))
        paths.append(str(path))
    return paths


async def test_create_wait_download(node: SimNode, tmp_path: Path) -> None:
    def run() -> tuple[Path, list[str], object]:
        client = Node.from_url(node.url)
        task = client.create_task(_images(tmp_path), {"dsm": True}, name="pyodm flight")
        task.wait_for_completion(interval=0.05)
        out = Path(task.download_assets(str(tmp_path / "results")))
        return out, task.output(), task.info()

    out, output, info = await asyncio.to_thread(run)
    assert (out / "odm_orthophoto" / "odm_orthophoto.tif").stat().st_size > 100_000
    assert (out / "task_output.txt").read_text() == "\n".join(output)
    assert "DJI_0001.JPG" in (out / "images.json").read_text()
    assert info.status == PyodmStatus.COMPLETED and info.progress == 100  # type: ignore[attr-defined]
    assert info.images_count == 3  # type: ignore[attr-defined]
    assert {"name": "dsm", "value": True} in info.options  # type: ignore[attr-defined]


async def test_options_and_info(node: SimNode) -> None:
    def run() -> tuple[list[str], int]:
        client = Node.from_url(node.url)
        return [o.name for o in client.options()], client.info().max_parallel_tasks

    names, parallel = await asyncio.to_thread(run)
    assert len(names) == 80 and "orthophoto-resolution" in names
    assert parallel == 1


async def test_cancel_restart_remove(start_node: StartNode, tmp_path: Path) -> None:
    node = await start_node(test_seconds=5)

    def run() -> list[object]:
        client = Node.from_url(node.url)
        task = client.create_task(_images(tmp_path, 2))
        seen = []
        assert task.cancel()
        seen.append(task.info().status)
        with pytest.raises(TaskFailedError):
            task.wait_for_completion(interval=0.05)
        assert task.restart()
        seen.append(task.info().status)
        assert task.remove()
        seen.append([t for t in client.get("/task/list")])
        return seen

    statuses = await asyncio.to_thread(run)
    assert statuses[0] == PyodmStatus.CANCELED
    assert statuses[1] in (PyodmStatus.QUEUED, PyodmStatus.RUNNING)
    assert statuses[2] == [] and dict(node.tasks) == {}


async def test_failed_task_raises(start_node: StartNode, tmp_path: Path) -> None:
    node = await start_node(test_seconds=0.1, test_fail_tasks=True)

    def run() -> None:
        task = Node.from_url(node.url).create_task(_images(tmp_path, 1))
        task.wait_for_completion(interval=0.05)

    with pytest.raises(TaskFailedError):
        await asyncio.to_thread(run)


async def test_ranged_parallel_download(start_node: StartNode, tmp_path: Path) -> None:
    """Above 10 MB pyodm downloads in 16 ranged parts when the node offers Accept-Ranges."""
    node = await start_node(test_seconds=0, zip_size=25_000_000)

    def run() -> Path:
        task = Node.from_url(node.url).create_task(_images(tmp_path, 2))
        task.wait_for_completion(interval=0.05)
        return Path(task.download_zip(str(tmp_path / "dl")))

    archive = await asyncio.to_thread(run)
    assert archive.stat().st_size == 25_000_000
    with zipfile.ZipFile(archive) as zipped:
        assert zipped.testzip() is None
