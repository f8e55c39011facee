"""Benchmark of the simulated node: requests/s of GET /info and task info, all.zip MB/s, peak RSS.

The node runs in its own process (as a benchmark baseline "direct to node" would); load comes
from an aiohttp client here. The node's peak RSS (VmHWM) must stay flat (< 100 MB) however large
all.zip is, since the archive is generated on the fly.

    python bench/bench_simnode.py            # 1 GB all.zip, 5 s per request test
    python bench/bench_simnode.py --quick    # ~15 s: 200 MB all.zip, 2 s per request test
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp

_CONCURRENCY = 16
_RSS_LIMIT_MB = 100


async def _start_node(zip_size: int) -> tuple[asyncio.subprocess.Process, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clusterodm.simnode",
        "--port",
        "0",
        "--zip-size",
        str(zip_size),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
    return process, line.split()[-1]


async def _make_task(http: aiohttp.ClientSession, url: str) -> str:
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("name", "bench")
    async with http.post(f"{url}/task/new/init", data=form) as response:
        uuid: str = (await response.json())["uuid"]
    upload = aiohttp.FormData()
    upload.add_field("images", b"\xff\xd8" + bytes(4096), filename="IMG_0001.JPG")
    async with http.post(f"{url}/task/new/upload/{uuid}", data=upload) as response:
        assert (await response.json()) == {"success": True}
    async with http.post(f"{url}/task/new/commit/{uuid}") as response:
        await response.read()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        async with http.get(f"{url}/task/{uuid}/info") as response:
            if (await response.json())["status"]["code"] == 40:
                return uuid
        await asyncio.sleep(0.1)
    raise RuntimeError("task did not complete")


async def _requests_per_s(http: aiohttp.ClientSession, url: str, seconds: float) -> float:
    count = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal count
        while time.monotonic() < deadline:
            async with http.get(url) as response:
                await response.read()
                assert response.status == 200
            count += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(_CONCURRENCY)))
    return count / (time.monotonic() - started)


async def _download_mb_s(http: aiohttp.ClientSession, url: str, size: int) -> float:
    received = 0
    started = time.monotonic()
    async with http.get(url) as response:
        async for chunk in response.content.iter_chunked(1 << 20):
            received += len(chunk)
    elapsed = time.monotonic() - started
    assert received == size, (received, size)
    return received / elapsed / 1e6


def _peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def main(quick: bool) -> int:
    zip_size = 200_000_000 if quick else 1_000_000_000
    seconds = 2.0 if quick else 5.0
    process, url = await _start_node(zip_size)
    try:
        connector = aiohttp.TCPConnector(limit=_CONCURRENCY)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            uuid = await _make_task(http, url)
            info_rps = await _requests_per_s(http, f"{url}/info", seconds)
            task_rps = await _requests_per_s(http, f"{url}/task/{uuid}/info", seconds)
            zip_url = f"{url}/task/{uuid}/download/all.zip"
            mb_s = await _download_mb_s(http, zip_url, zip_size)
        peak = _peak_rss_mb(process.pid)
    finally:
        process.terminate()
        await process.wait()
    print(f"GET /info:             {info_rps:8.0f} requests/s ({_CONCURRENCY} concurrent)")
    print(f"GET /task/<uuid>/info: {task_rps:8.0f} requests/s ({_CONCURRENCY} concurrent)")
    print(f"all.zip download:      {mb_s:8.0f} MB/s ({zip_size / 1e9:.1f} GB)")
    print(f"simnode peak RSS:      {peak:8.1f} MB (limit {_RSS_LIMIT_MB} MB)")
    return 0 if peak < _RSS_LIMIT_MB else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, about 15 s")
    sys.exit(asyncio.run(main(parser.parse_args().quick)))
