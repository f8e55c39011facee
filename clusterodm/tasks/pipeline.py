"""Upload pipelines: images go on to their node while the client is still uploading.

Without this, a task's images cross the network twice in a row: client -> proxy (staged), then
proxy -> node after commit, so the task starts about twice as late as on a node reached
directly. With a pipeline, the node is chosen at the first upload (when a slot is free and no
task waits in the queue), the task is initialised there under its uuid, and every image, once
staged, is sent on at once. At commit only the stragglers are left to send; the node is
initialised again with the final fields (NodeODM keeps the staged images) and committed.

The staged copy stays the source of truth: if anything goes wrong the pipeline is dropped and
the ordinary dispatch runs from the staged files, preferring another node (the pipeline's node
may hold part of the upload under this uuid). Only nodes without a ``maxImages`` limit are used,
since the image count is not known until commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from clusterodm.config import DispatchSettings
from clusterodm.errors import NodeError, NodeRejected, NodeUnreachable
from clusterodm.model import Node
from clusterodm.nodes.client import NodeClient
from clusterodm.nodes.registry import NodeRegistry
from clusterodm.store.base import Store

log = logging.getLogger(__name__)

ANY_SIZE = 2**31  # only nodes that take any number of images
PIPELINE_META = "pipeline:"  # store meta key: {"node": key, "sent": [names]} of an upload
IDLE_S = 30 * 60.0  # a pipeline with no upload for this long gives its slot back


@dataclass
class Pipeline:
    uuid: str
    node: Node
    sent: set[str] = field(default_factory=set)
    jobs: set[asyncio.Task[None]] = field(default_factory=set)
    error: NodeError | None = None
    last_activity: float = field(default_factory=time.monotonic)


class UploadPipelines:
    def __init__(
        self,
        registry: NodeRegistry,
        client: NodeClient,
        settings: DispatchSettings,
        queue_empty: Callable[[], bool],
        store: Store,
    ) -> None:
        self.registry = registry
        self.client = client
        self.settings = settings
        self.queue_empty = queue_empty
        self.store = store
        self._pipes: dict[str, Pipeline] = {}
        self._sem = asyncio.Semaphore(settings.parallel_uploads)
        self._opening: dict[str, asyncio.Lock] = {}

    def __contains__(self, uuid: str) -> bool:
        return uuid in self._pipes

    async def open(self, uuid: str, fields: Mapping[str, str]) -> Pipeline | None:
        """Pick a node with a free slot and initialise the task there; None if not now."""
        if uuid in self._pipes:
            return self._pipes[uuid]
        lock = self._opening.setdefault(uuid, asyncio.Lock())
        async with lock:
            if uuid in self._pipes:
                return self._pipes[uuid]
            if not self.queue_empty():
                return None
            node = self.registry.best(ANY_SIZE, require_slot=True)
            if node is None:
                return None
            self.registry.add_transient(node.key)
            try:
                await self.client.init_task(node, uuid, dict(fields))
            except NodeError as e:
                self.registry.drop_transient(node.key)
                log.info("task %s: no early forwarding to %s: %s", uuid, node.key, e.message)
                return None
            pipe = Pipeline(uuid, node)
            self._pipes[uuid] = pipe
            await self._remember(pipe)
            log.debug("task %s: forwarding images to %s while they arrive", uuid, node.key)
            return pipe

    def file_saved(self, uuid: str, path: Path) -> None:
        """A staged image is complete: send it on now (in the background, bounded)."""
        pipe = self._pipes.get(uuid)
        if pipe is None or pipe.error is not None:
            return
        pipe.last_activity = time.monotonic()
        job = asyncio.create_task(self._send(pipe, path), name=f"pipeline {uuid}")
        pipe.jobs.add(job)
        job.add_done_callback(pipe.jobs.discard)

    async def _send(self, pipe: Pipeline, path: Path) -> None:
        async with self._sem:
            for attempt in range(1, self.settings.upload_retries + 1):
                if pipe.error is not None:
                    return
                try:
                    await self.client.upload(pipe.node, pipe.uuid, path)
                    pipe.sent.add(path.name)
                    await self._remember(pipe)
                    return
                except (NodeRejected, NodeUnreachable) as e:
                    no_retry = isinstance(e, NodeRejected) and e.no_retry
                    if no_retry or attempt == self.settings.upload_retries:
                        pipe.error = e
                        return
                await asyncio.sleep(min(0.5 * attempt, 5.0))

    async def _remember(self, pipe: Pipeline) -> None:
        """Persist which node holds which of the images, so that after a crash the task is
        completed there without sending any image twice."""
        record = {"node": pipe.node.key, "sent": sorted(pipe.sent)}
        await self.store.set_meta(PIPELINE_META + pipe.uuid, json.dumps(record))

    async def finish(self, uuid: str, files: list[Path], fields: Mapping[str, str]) -> Node:
        """Send what is left, initialise again with the final fields, commit. Raises NodeError;
        either way the pipeline is over (its slot reservation passes to the caller on success).
        """
        pipe = self._pipes.pop(uuid)
        ok = False
        try:
            if pipe.jobs:
                await asyncio.gather(*list(pipe.jobs))
            if pipe.error is not None:
                raise pipe.error
            for path in files:
                if path.name not in pipe.sent:
                    await self._send(pipe, path)
            if pipe.error is not None:
                raise pipe.error
            await self.client.init_task(pipe.node, uuid, dict(fields))
            await self.client.commit(pipe.node, uuid)
            ok = True
            return pipe.node
        finally:
            if not ok:  # on success the caller drops it once the task is counted on the node
                self.registry.drop_transient(pipe.node.key)

    async def close(self, uuid: str) -> Node | None:
        """Drop a pipeline (upload abandoned, or dispatch falls back); its node, if any."""
        pipe = self._pipes.pop(uuid, None)
        self._opening.pop(uuid, None)
        if pipe is None:
            return None
        pipe.error = pipe.error or NodeRejected("pipeline closed", pipe.node.key)
        for job in list(pipe.jobs):
            job.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*list(pipe.jobs), return_exceptions=True)
        self.registry.drop_transient(pipe.node.key)
        return pipe.node

    async def expire(self, now: float | None = None) -> list[str]:
        """Close pipelines of uploads the client stopped sending (slot given back)."""
        now = time.monotonic() if now is None else now
        idle = [u for u, p in self._pipes.items() if not p.jobs and now - p.last_activity > IDLE_S]
        for uuid in idle:
            await self.close(uuid)
        return idle

    async def close_all(self) -> None:
        for uuid in list(self._pipes):
            await self.close(uuid)
