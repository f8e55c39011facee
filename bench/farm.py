"""Many simulated nodes in one process, each with a few finished tasks to poll.

    python -m bench.farm --nodes 100 --tasks 10

Prints one JSON line, ``{"nodes": [{"port": P, "tasks": [uuid, ...]}, ...]}``, once every node
listens and every task exists, then serves until killed. One process keeps 100 nodes cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import uuid as uuidlib

import aiohttp

from clusterodm.simnode import SimNode, SimNodeConfig, start_simnode


async def _make_task(http: aiohttp.ClientSession, node: SimNode) -> str:
    uuid = str(uuidlib.uuid4())
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("name", "bench")
    async with http.post(
        f"{node.url}/task/new/init", data=form, headers={"set-uuid": uuid}
    ) as response:
        assert (await response.json())["uuid"] == uuid
    upload = aiohttp.FormData()
    upload.add_field("images", b"\xff\xd8" + bytes(1024), filename="IMG_0001.JPG")
    async with http.post(f"{node.url}/task/new/upload/{uuid}", data=upload) as response:
        assert (await response.json()) == {"success": True}
    async with http.post(f"{node.url}/task/new/commit/{uuid}") as response:
        await response.read()
    return uuid


async def serve(nodes: int, tasks: int) -> None:
    started = [await start_simnode(SimNodeConfig(parallel=max(1, tasks))) for _ in range(nodes)]
    made: dict[int, list[str]] = {}
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as http:

        async def one(node: SimNode) -> None:
            async with sem:
                made[node.port] = [await _make_task(http, node) for _ in range(tasks)]

        await asyncio.gather(*(one(n) for n in started))
    listing = [{"port": n.port, "tasks": made[n.port]} for n in started]
    print(json.dumps({"nodes": listing}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for node in started:
            await node.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=10)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.nodes, args.tasks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
