"""SimNode: one simulated node served on loopback (or any host), started and stopped in-process.

Owns the node's temporary folder (staging ``tmp/`` and task ``data/``), deleted on stop.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType, TracebackType

from aiohttp import web

from .app import KEEP_ALIVE_S, NodeContext, make_app
from .config import SimNodeConfig
from .staging import Staging
from .tasks import Task, TaskManager
from .webhook import WebhookSender

#: How long stop() lets in-flight requests finish before closing their connections.
_SHUTDOWN_TIMEOUT_S = 1.0


class SimNode:
    """A running simulated node; use :func:`start_simnode` to get one."""

    kind = "sim"  # beside the real NodeODM in tests that run against both

    def __init__(self, context: NodeContext, runner: web.AppRunner, host: str, port: int) -> None:
        self._context = context
        self._runner = runner
        self.host = host
        self.port = port
        self._stopped = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def config(self) -> SimNodeConfig:
        """The live settings; fault knobs changed here act on the next request."""
        return self._context.config

    @property
    def tasks(self) -> Mapping[str, Task]:
        """Read-only view of the node's tasks, by uuid, in creation order."""
        return MappingProxyType(self._context.tasks.tasks)

    @property
    def upload_requests(self) -> int:
        """Upload requests received so far (``POST /task/new/upload/<uuid>``), failed ones too."""
        return self._context.upload_requests

    @property
    def requests(self) -> Mapping[str, int]:
        """Requests received so far, by path (every method, answered or not)."""
        return MappingProxyType(self._context.requests)

    @property
    def temp_dir(self) -> Path:
        return self._context.root

    async def stop(self) -> None:
        """Stop runs and webhooks, close the server, delete the temporary folder. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._context.stopping.set()
        await self._context.tasks.close()
        await self._context.webhooks.close()
        await self._runner.cleanup()
        await asyncio.to_thread(shutil.rmtree, self._context.root, True)

    async def __aenter__(self) -> SimNode:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def start_simnode(
    config: SimNodeConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> SimNode:
    """Start a simulated node on ``host:port`` (0 = a free port) and return it once listening."""
    config = config if config is not None else SimNodeConfig()
    root = Path(tempfile.mkdtemp(prefix="simnode-"))
    webhooks = WebhookSender()
    holder: list[NodeContext] = []

    def finished(task: Task) -> None:
        context = holder[0]
        webhooks.send([task.webhook, config.webhook], context.tasks.webhook_body(task))

    context = NodeContext(
        config=config,
        root=root,
        tasks=TaskManager(config, root / "data", finished),
        staging=Staging(root / "tmp"),
        webhooks=webhooks,
    )
    holder.append(context)
    runner = web.AppRunner(
        make_app(context),
        access_log=None,
        shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        keepalive_timeout=KEEP_ALIVE_S,
    )
    try:
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        shutil.rmtree(root, ignore_errors=True)
        raise
    bound = site.port if port == 0 else port
    return SimNode(context, runner, host, bound)
