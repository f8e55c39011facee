"""A browser reload through the cluster (#14, defect 1): bodyless answers end, SIGTERM ends.

The cluster runs as its own process (``python -m clusterodm``), so a request that kept its event
loop busy shows as a cluster that stops answering, and SIGTERM is sent for real.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.test_crash import write_nodes_json
from tests.helpers import eventually
from tests.proxyproc import ProxyProcess
from tests.realnode import RealNode

#: how long the cluster may take for ``/info`` after the reloads
INFO_WITHIN_S = 1.0


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[ProxyProcess]:
    p = ProxyProcess(tmp_path / "data")
    yield p
    await p.kill()


async def info_time(s: aiohttp.ClientSession, url: str) -> float:
    """Seconds ``/info`` took (fails when it took longer than INFO_WITHIN_S)."""
    t0 = time.monotonic()
    async with s.get(f"{url}/info", timeout=aiohttp.ClientTimeout(total=INFO_WITHIN_S)) as r:
        assert r.status == 200
        await r.json()
    return time.monotonic() - t0


async def test_conditional_reloads_of_the_ui_answer_304_and_the_cluster_goes_on(
    proxy: ProxyProcess, node_factory: Callable[..., Awaitable[RealNode]]
) -> None:
    node = await node_factory(test_seconds=1)
    write_nodes_json(proxy.data_dir, node)  # type: ignore[arg-type]
    url = await proxy.start()
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as s:

        async def ui_online() -> bool:
            async with s.get(f"{url}/") as r:
                return r.status == 200

        await eventually(ui_online, timeout_s=15, message="the node's UI through the cluster")
        async with s.get(f"{url}/") as first:
            assert first.status == 200
            etag = first.headers["ETag"]
            page = await first.read()
        assert b"<html" in page.lower()
        # several reloads: aiohttp's empty reader is shared, the second 304 used to spin for ever
        for _ in range(3):
            async with s.get(f"{url}/", headers={"If-None-Match": etag}) as again:
                assert again.status == 304
                assert await again.read() == b""
            assert await info_time(s, url) < INFO_WITHIN_S
        async with s.head(f"{url}/") as head:
            assert head.status == 200
            assert head.headers["Content-Length"] == str(len(page))
        assert await info_time(s, url) < INFO_WITHIN_S

    assert proxy.proc is not None
    t0 = time.monotonic()
    proxy.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proxy.proc.wait(), 15) == 0
    assert time.monotonic() - t0 < 15


SPINNER = textwrap.dedent(
    """
    import asyncio, signal, sys
    from clusterodm.app import on_stop_signal

    async def main():
        stop = asyncio.Event()
        handler = on_stop_signal(asyncio.get_running_loop(), stop, grace_s=1.0)
        signal.signal(signal.SIGTERM, handler)
        print("spinning", flush=True)
        while True:  # a handler that never awaits: the loop never polls again
            pass

    asyncio.run(main())
    """
)


async def test_sigterm_ends_the_process_even_when_the_event_loop_is_stuck() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SPINNER, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"spinning\n"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
        assert code == 128 + signal.SIGTERM
        assert 0.9 < time.monotonic() - t0 < 5
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
