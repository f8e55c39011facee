"""The command line in a separate, killable process: URL on stdout, clean SIGTERM exit."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp


def _node_dirs(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith("simnode-")]


async def test_cli_prints_url_and_cleans_up_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clusterodm.simnode",
        "--port",
        "0",
        "--test",
        "--test-seconds",
        "0.1",
        "--max_images",
        "7",
        "-q",
        "2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=15)).decode()
        assert line.startswith("SimNode listening on http://127.0.0.1:")
        url = line.split()[-1]
        async with aiohttp.ClientSession() as http, http.get(f"{url}/info") as response:
            info = await response.json()
        assert (info["maxImages"], info["maxParallelTasks"]) == (7, 2)
        assert len(_node_dirs(tmp_path)) == 1
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
        assert _node_dirs(tmp_path) == []
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
