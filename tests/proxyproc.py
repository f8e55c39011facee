"""``python -m clusterodm`` in a process of its own, for tests that kill it for real (SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

from clusterodm.compat import timeout

LISTENING = re.compile(r"listening on port (\d+)")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class ProxyProcess:
    """A cluster process on loopback; ``port=0`` takes a free port at each start (read from the
    log), a fixed port keeps the same address across a kill and a restart."""

    def __init__(
        self, data_dir: Path, *args: str, port: int = 0, env: dict[str, str] | None = None
    ) -> None:
        self.data_dir = data_dir
        self.args = args  # more flags, e.g. --store for several instances
        self.port = port
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.url = f"http://127.0.0.1:{port}" if port else ""
        self.drain: asyncio.Future[None] | None = None

    async def start(self) -> str:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "clusterodm",
            f"--port={self.port}",
            "--bind=127.0.0.1",
            "--admin-cli-port=0",
            "--admin-web-port=0",
            f"--data-dir={self.data_dir}",
            *self.args,
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            env=self.env,
        )
        assert self.proc.stderr is not None
        lines: list[str] = []
        async with timeout(START_TIMEOUT_S):
            while True:
                raw = await self.proc.stderr.readline()
                if not raw:
                    raise AssertionError("proxy exited:\n" + "".join(lines[-30:]))
                line = raw.decode(errors="replace")
                lines.append(line)
                if m := LISTENING.search(line):
                    self.url = f"http://127.0.0.1:{m.group(1)}"
                    break
        self.drain = asyncio.ensure_future(self._drain(self.proc))
        return self.url

    @staticmethod
    async def _drain(proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while await proc.stderr.readline():
            pass

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        if self.drain is not None:
            await self.drain
            self.drain = None

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is not gone within ``STOP_TIMEOUT_S``."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with timeout(STOP_TIMEOUT_S):
                    await self.proc.wait()
            except (TimeoutError, asyncio.TimeoutError):
                pass
        await self.kill()
