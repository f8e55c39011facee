"""The real NodeODM 2.2.4 (test mode) on a free loopback port, for tests that must meet it.

``start_real_node()`` runs ``$NODEODM_SH PORT --test ...`` (the script beside the peers in
``../shared/peers``, which ``.ci/run`` exports), waits for ``GET /info`` (bounded) and returns a
:class:`RealNode` that looks like a :class:`clusterodm.simnode.SimNode` where the cluster's tests
need it to (``host``, ``port``, ``url``, ``config.token``, ``stop()``). Its working folder is ours,
so tests can look at what the node holds (``tests/data/<uuid>/images`` in test mode).

Without ``NODEODM_SH`` the caller is skipped with that reason locally and failed under
``CI=true``, where a missing node means a broken CI script rather than a developer's machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.redis_server import free_port

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
ENV = "NODEODM_SH"


def nodeodm_sh_or_skip() -> str:
    """The path of ``nodeodm.sh``; skips (or fails under CI) when it is not configured."""
    path = os.environ.get(ENV, "")
    if path and os.path.isfile(path):
        return path
    reason = f"{ENV} is not set to ../shared/peers/nodeodm.sh: the real NodeODM is not available"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class RealNodeConfig:
    """The NodeODM flags a test chose; ``token`` is read by the cluster fixtures."""

    token: str | None = None
    max_images: int | None = None
    parallel: int = 1
    test_seconds: float = 1.0
    extra: list[str] = field(default_factory=list)

    def flags(self) -> list[str]:
        out = ["--test_seconds", str(self.test_seconds), "-q", str(self.parallel)]
        if self.token:
            out += ["--token", self.token]
        if self.max_images is not None:
            out += ["--max_images", str(self.max_images)]
        return out + self.extra


class RealNode:
    """One running NodeODM process; stop it with :meth:`stop` (SIGTERM, then SIGKILL)."""

    kind = "real"

    def __init__(
        self, process: subprocess.Popen[bytes], port: int, work: Path, config: RealNodeConfig
    ) -> None:
        self.process = process
        self.host = "127.0.0.1"
        self.port = port
        self.work = work
        self.config = config

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def task_dir(self, uuid: str) -> Path:
        """Where the node keeps a task in test mode (``images/`` inside holds the uploads)."""
        return self.work / "tests" / "data" / uuid

    def images(self, uuid: str) -> list[str]:
        """Names of the images the node holds for a task, sorted; [] when it has none."""
        d = self.task_dir(uuid) / "images"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def info(self, timeout_s: float = 2.0) -> dict[str, object]:
        query = f"?token={self.config.token}" if self.config.token else ""
        with urllib.request.urlopen(f"{self.url}/info{query}", timeout=timeout_s) as r:
            data: dict[str, object] = json.loads(r.read())
            return data

    def pause(self) -> None:
        """Freeze the node (SIGSTOP to its process group): connections open, nothing answers."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def stop_sync(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGCONT)
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(STOP_TIMEOUT_S)
        shutil.rmtree(self.work, ignore_errors=True)

    async def stop(self) -> None:
        """Stop the node and delete its working folder. Idempotent."""
        await asyncio.to_thread(self.stop_sync)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


def start_real_node_sync(config: RealNodeConfig | None = None) -> RealNode:
    """Start a real NodeODM and wait until it answers ``/info`` (blocking; see module doc)."""
    script = nodeodm_sh_or_skip()
    config = config or RealNodeConfig()
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix=f"nodeodm-{port}-"))
    env = {**os.environ, "NODEODM_WORK": str(work)}
    log = open(work / "node.log", "wb")
    process = subprocess.Popen(
        [script, str(port), *config.flags()],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    log.close()
    node = RealNode(process, port, work, config)
    query = f"?token={config.token}" if config.token else ""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(f"{node.url}/info{query}"):
        if process.poll() is not None or time.monotonic() > deadline:
            text = (work / "node.log").read_text(errors="replace")[-2000:]
            node.stop_sync()
            raise RuntimeError(f"NodeODM did not start on port {port}: {text}")
        time.sleep(0.1)
    return node


async def start_real_node(**config: object) -> RealNode:
    """Async form of :func:`start_real_node_sync`: ``await start_real_node(test_seconds=1)``."""
    return await asyncio.to_thread(start_real_node_sync, RealNodeConfig(**config))  # type: ignore[arg-type]
