"""Upload pipelines: images go on to their node while the client is still uploading.

Without this, a task's images cross the network twice in a row: client -> proxy (staged), then
proxy -> node after commit, so the task starts about twice as late as on a node reached
directly. With a pipeline, the node is chosen at the first upload (when a slot is free and no
task waits in the queue) and the task is initialised there under its uuid. From then on each
upload request is relayed: its files go to the node as they arrive, while the same bytes are
staged here, so an image crosses the proxy once and is never read back from disk. Where a
relay is not possible (the body was partly read already, or the upload speed to nodes is
capped) each image is sent on from its staged file instead. At commit only the
stragglers are left to send; the node is initialised again if the final fields differ from
those it was opened with (NodeODM keeps the staged images) and committed; the client's commit
is answered once that is done (``COMMIT_SETTLE_S`` at most).

Each relayed file is sent under the name it is staged under, chosen before its bytes arrive
(``UploadPipelines.name``), so the node holds the staging folder's names and never has to rename
a clash itself (it could give two same-named files arriving at once one name, #14). A relay is
trusted only when it ends cleanly: the node answered success and every file was staged under
the name it was sent with. Otherwise the pipeline ends: the task is then forwarded the ordinary
way, preferably to another node.

A pipeline's slot is held only while its upload goes on: an upload with no request under way
for ``DispatchSettings.early_forwarding_idle_s`` (``--early-forwarding-idle``, tens of seconds)
gives the slot back at once, so an upload the client abandoned (a failed ``create_task`` that
the client starts again as a new task) never holds a node that a ready task could use. If the
upload resumes, the slot is taken again when it is still free and no task waits for it;
otherwise the pipeline ends and the task is forwarded the ordinary way after commit.

The staged copy stays the source of truth: if anything goes wrong the pipeline is dropped and
the ordinary dispatch runs from the staged files, preferring another node (the pipeline's node
may hold part of the upload under this uuid). Only nodes without a ``maxImages`` limit are used,
since the image count is not known until commit.

Several instances on one shared store (``share``): the task's uploads may reach any of them. The
pipeline's record in the store is then what they share: the first upload on any instance opens
it (under a short lock, so one node is chosen), later ones on any instance join it and relay to
the same node, every relay's images are merged into it, a failure marks it broken for all, and
the instance that receives the commit adopts it and finishes it. Relays are not detached there:
each upload's images are recorded before its client is answered, so at commit the record is
complete whichever instance relayed them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path

from clusterodm.config import DispatchSettings
from clusterodm.errors import NodeError, NodeRejected, NodeUnreachable, StoreError
from clusterodm.model import Node
from clusterodm.nodes.client import NodeClient
from clusterodm.nodes.registry import NodeRegistry
from clusterodm.store.base import Coordination, Store
from clusterodm.store.staging import free_name
from clusterodm.tasks import nodeside

log = logging.getLogger(__name__)

ANY_SIZE = 2**31  # only nodes that take any number of images
PIPELINE_META = "pipeline:"  # store meta key: {"node": key, "sent": [names]} of an upload
IDLE_S = 30 * 60.0  # a pipeline with no upload for this long is dropped (its slot went before)
RELAY_BUFFER_BYTES = 4 * 1024 * 1024
"""Received bytes a relay holds for a node slower than the client; then the client waits."""
LOCK_TTL_MS = 10_000  # a record lock outlives any holder that died with it by this much
LOCK_WAIT_S = 15.0  # then a request goes on without the pipeline
SHARED_IDLE_S = 120.0  # an instance lets go of a shared pipeline it has not used for this long
RECORD_INTERVAL_S = 0.25
"""Between two writes of one pipeline's record (one instance): a write per relayed image cost
about a tenth of the proxy's CPU on uploads of small images."""
MAX_DETACHED_RELAYS = 4
"""Relays of one upload that may go on after their client was answered (memory bound:
this times ``RELAY_BUFFER_BYTES``)."""


@dataclass
class Pipeline:
    uuid: str
    node: Node
    sent: set[str] = field(default_factory=set)
    taken: set[str] = field(default_factory=set)  # names given to relayed files (``name``)
    jobs: set[asyncio.Task[None]] = field(default_factory=set)
    error: NodeError | None = None
    last_activity: float = field(default_factory=time.monotonic)
    detached: int = 0  # relays still sending after their client was answered
    joined: bool = False  # opened by another instance: no slot counted here
    closed: bool = False  # dropped: what its relays still do is not recorded
    version: int = 0  # changes of ``sent`` asked to be recorded ...
    written: int = 0  # ... and how many of them the store holds
    writer: asyncio.Future[None] | None = None  # writes the record while it lags behind
    last_write: float = 0.0  # monotonic time of the last record write
    hurry: asyncio.Event = field(default_factory=asyncio.Event)  # a flush waits: write now
    uploads: int = 0  # upload requests of this task under way (not quiet while any is)
    fields: dict[str, str] = field(default_factory=dict)  # the task was initialised with
    released: bool = False  # quiet for a while: its slot was given back (``release_idle``)


@dataclass(frozen=True)
class PipelineRecord:
    """A pipeline as the store keeps it (``pipeline:<uuid>``): its node, the images the node
    holds, and whether it broke (then nobody relays to it any more)."""

    node: str
    sent: frozenset[str]
    broken: bool = False

    @staticmethod
    def parse(raw: str | None) -> PipelineRecord | None:
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("node"), str):
            return None
        sent = data.get("sent")
        names = frozenset(str(n) for n in sent) if isinstance(sent, list) else frozenset()
        return PipelineRecord(data["node"], names, bool(data.get("broken")))


class Relay:
    """One client upload request's files on their way to the pipeline's node, in a multipart
    body of their own whose parts carry the names the files are staged under.

    Each file's name is chosen when its part's headers arrive (``begin``): the first one free
    in the staging folder and among the names other relays of the task have taken. The node
    therefore never meets a clash: NodeODM picks a free name before it writes, so two
    same-named files reaching it at once could both take ``a_.jpg`` and one be lost (#14).
    ``feed`` is called with each chunk of the file's data as it is staged; the body is written
    to the node by a request of its own (``job``). A node that fails makes ``begin`` and
    ``feed`` no-ops, so the client's upload goes on into staging regardless.
    """

    def __init__(
        self, pipe: Pipeline, send: Callable[[AsyncIterator[bytes], str], Awaitable[None]]
    ):
        self.pipe = pipe
        self.names: list[str] = []  # sent to the node, in order
        self._boundary = secrets.token_hex(16)
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._closed = False
        self._more = asyncio.Event()
        self._room = asyncio.Event()
        content_type = f"multipart/form-data; boundary={self._boundary}"
        self.job = asyncio.ensure_future(send(self._body(), content_type))
        self.job.add_done_callback(lambda _: self._room.set())

    def begin(self, name: str) -> None:
        """A file part named ``name`` (already sanitised: no control characters) starts."""
        self.names.append(name)
        quoted = name.replace("\\", "\\\\").replace('"', '\\"')
        head = "\r\n" if len(self.names) > 1 else ""
        head += (
            f"--{self._boundary}\r\n"
            f'Content-Disposition: form-data; name="images"; filename="{quoted}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        self._push(head.encode())

    def _push(self, data: bytes) -> None:
        if self.job.done():
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self._more.set()

    async def feed(self, chunk: bytes) -> None:
        """Data of the current file part; waits while the node lags too far behind."""
        self._push(chunk)
        while self._buffered > RELAY_BUFFER_BYTES and not self.job.done():
            self._room.clear()
            await self._room.wait()

    async def _body(self) -> AsyncIterator[bytes]:
        while True:
            while not self._chunks:
                if self._closed:
                    return
                self._more.clear()
                await self._more.wait()
            chunk = self._chunks.popleft()
            self._buffered -= len(chunk)
            self._room.set()
            yield chunk

    def close(self) -> None:
        """Every file was fed: the closing boundary ends the body."""
        if self.names:
            self._push(f"\r\n--{self._boundary}--\r\n".encode())
        self._closed = True
        self._more.set()

    def fail(self) -> None:
        """The client's request broke off: end the pipeline at once (before anything else
        happens, e.g. the client sending the image again) and stop the node's request half-way,
        so that the node drops what it got of it."""
        pipe = self.pipe
        pipe.error = pipe.error or NodeRejected("upload relay aborted", pipe.node.key)
        self.job.cancel()

    async def abort(self) -> None:
        self.fail()
        with contextlib.suppress(BaseException):
            await self.job


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
        self.coordination: Coordination | None = None  # set by ``share``
        self.instance = ""

    def share(self, coordination: Coordination, instance: str) -> None:
        """Several instances on one shared store: pipelines live in the store (module doc)."""
        self.coordination = coordination
        self.instance = instance

    @property
    def shared(self) -> bool:
        return self.coordination is not None

    @contextlib.asynccontextmanager
    async def _record_lock(self, uuid: str) -> AsyncIterator[None]:
        """The pipeline record of ``uuid``, for this instance alone while held."""
        assert self.coordination is not None
        key = f"lock:{PIPELINE_META}{uuid}"
        owner = f"{self.instance}:{id(asyncio.current_task())}"
        deadline = time.monotonic() + LOCK_WAIT_S
        while not await self.coordination.claim(key, owner, LOCK_TTL_MS):
            if time.monotonic() > deadline:
                raise NodeRejected("the upload's pipeline record stayed locked")
            await asyncio.sleep(0.005)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                await self.coordination.release(key, owner)

    async def _read_record(self, uuid: str) -> PipelineRecord | None:
        return PipelineRecord.parse(await self.store.get_meta(PIPELINE_META + uuid))

    def _join(self, uuid: str, record: PipelineRecord) -> Pipeline | None:
        """This instance takes part in a pipeline another opened (or that it lost track of)."""
        node = self.registry.get(record.node)
        if record.broken or node is None:
            return None
        pipe = Pipeline(uuid, node, sent=set(record.sent))
        pipe.joined = True
        self._pipes[uuid] = pipe
        return pipe

    async def adopt(self, uuid: str) -> bool:
        """At commit on a shared store: take over the upload's pipeline, wherever it was
        opened, so that this instance's dispatch finishes it. False if there is none to use."""
        if not self.shared:
            return uuid in self._pipes
        record = await self._read_record(uuid)
        pipe = self._pipes.get(uuid)
        if record is None or record.broken:
            return False
        if pipe is None:
            pipe = self._join(uuid, record)
            if pipe is None:
                return False
        else:
            pipe.sent |= record.sent
        if pipe.joined:
            pipe.joined = False
            self.registry.add_transient(pipe.node.key)  # this instance forwards the task now
        return True

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
            if not self.shared:
                return await self._open(uuid, fields)
            try:
                async with self._record_lock(uuid):
                    record = await self._read_record(uuid)
                    if record is not None:
                        return self._join(uuid, record)
                    return await self._open(uuid, fields)
            except NodeRejected as e:
                log.info("task %s: no early forwarding: %s", uuid, e.message)
                return None

    async def _open(self, uuid: str, fields: Mapping[str, str]) -> Pipeline | None:
        """Choose the node and initialise the task there (the record does not exist yet)."""
        if not self.queue_empty():
            return None
        node = self.registry.best(ANY_SIZE, require_slot=True)
        if node is None:
            return None
        self.registry.add_transient(node.key)
        pipe = Pipeline(uuid, node, fields=dict(fields))
        # The record names the node before the node holds anything: after a crash, whatever
        # the node then holds is found and cleared, never left behind (``nodeside``).
        if self.shared:
            await self._merge_record(pipe)  # under the record lock already
        else:
            await self._remember(pipe)
            await self._flush(pipe)  # commit reads the node from it
        try:
            await self.client.init_task(node, uuid, dict(fields))
        except NodeError as e:
            self.registry.drop_transient(node.key)
            log.info("task %s: no early forwarding to %s: %s", uuid, node.key, e.message)
            with contextlib.suppress(StoreError):
                await self.store.delete_meta(PIPELINE_META + uuid)
            return None
        self._pipes[uuid] = pipe
        log.debug("task %s: forwarding images to %s while they arrive", uuid, node.key)
        return pipe

    @contextlib.contextmanager
    def uploading(self, uuid: str) -> Iterator[None]:
        """An upload request of ``uuid`` is under way: its pipeline is not quiet meanwhile."""
        pipe = self._pipes.get(uuid)
        if pipe is None:
            yield
            return
        pipe.uploads += 1
        try:
            yield
        finally:
            pipe.uploads -= 1
            pipe.last_activity = time.monotonic()

    def _usable(self, pipe: Pipeline) -> bool:
        """Whether ``pipe`` may send to its node now: a slot given back while the upload was
        quiet is taken again if it is still free and no task waits for one; if not, the
        pipeline ends here (the task goes the ordinary way after commit)."""
        if pipe.error is not None:
            return False
        if not pipe.released:
            return True
        if self.queue_empty() and self.registry.is_online(pipe.node):
            node = self.registry.get(pipe.node.key)
            if node is not None and self.registry.slots(node) > 0:
                self.registry.add_transient(node.key)
                pipe.released = False
                log.info("task %s: upload resumed; slot on %s taken again", pipe.uuid, node.key)
                return True
        pipe.error = NodeRejected("upload resumed after its slot went to another task")
        log.info("task %s: upload resumed, %s has no free slot now", pipe.uuid, pipe.node.key)
        return False

    def relay(self, uuid: str) -> Relay | None:
        """Start relaying an upload request's files to the pipeline's node; None if there is
        no usable pipeline or uploads to nodes are speed-capped (then ``file_saved``)."""
        pipe = self._pipes.get(uuid)
        if pipe is None or self.client.rate_limiter is not None or not self._usable(pipe):
            return None
        pipe.last_activity = time.monotonic()

        async def send(body: AsyncIterator[bytes], content_type: str) -> None:
            await self.client.upload_body(pipe.node, uuid, body, content_type, None)

        relay = Relay(pipe, send)
        pipe.jobs.add(relay.job)
        relay.job.add_done_callback(pipe.jobs.discard)
        return relay

    def name(self, relay: Relay, filename: str, staged: Callable[[str], bool]) -> str:
        """Choose the name a relayed file is staged under, and send its part's headers.

        The first of ``filename``'s clash candidates that is neither staged (``staged``) nor
        given to another relayed file of the task; staging then keeps that name unless a file
        not relayed took it meanwhile, which ``_settle`` sees (the pipeline ends).
        """
        pipe = relay.pipe
        name = free_name(filename, lambda n: n in pipe.taken or staged(n))
        pipe.taken.add(name)
        relay.begin(name)
        return name

    async def relayed(self, uuid: str, relay: Relay, saved: list[tuple[str, str]]) -> None:
        """The request's files are staged; its relay may still be sending to the node.

        The client's answer does not wait for the node unless ``MAX_DETACHED_RELAYS`` of this
        upload are already under way (which bounds the memory held for a slow node): the
        staged copy is what counts, and the client's next image can start at once.
        """
        pipe = relay.pipe
        relay.close()
        if relay.job.done() or pipe.detached >= MAX_DETACHED_RELAYS or self.shared:
            await self._settle(uuid, relay, saved)
            return
        pipe.detached += 1
        settle = asyncio.ensure_future(self._settle(uuid, relay, saved))
        pipe.jobs.add(settle)

        def done(job: asyncio.Future[None]) -> None:
            pipe.jobs.discard(job)
            pipe.detached -= 1

        settle.add_done_callback(done)

    async def _settle(self, uuid: str, relay: Relay, saved: list[tuple[str, str]]) -> None:
        """Wait for the node's answer and record the images it now holds; a failed relay or a
        renamed image ends the pipeline (see module doc)."""
        pipe = relay.pipe
        try:
            await relay.job
        except NodeError as e:
            log.info("task %s: relay to %s failed: %s", uuid, pipe.node.key, e.message)
            pipe.error = pipe.error or e
            await self._failed(pipe)
            return
        if pipe.closed:
            return  # dropped meanwhile (``finish`` only takes it out of the table: it waits)
        # Recorded even once the pipeline has failed: if the task then goes to this node again,
        # what it already holds is not sent twice (NodeODM would keep both copies).
        stored = [name for _, name in saved]
        if stored != relay.names:
            moved = next(p for p in zip_longest(relay.names, stored, fillvalue="") if p[0] != p[1])
            msg = f"image {moved[0][:80]!r} was staged as {moved[1][:80]!r}"
            pipe.error = pipe.error or NodeRejected(msg, pipe.node.key)
            await self._failed(pipe)
            return
        pipe.last_activity = time.monotonic()
        pipe.sent.update(stored)
        await self._remember(pipe)

    def file_saved(self, uuid: str, path: Path) -> None:
        """A staged image is complete: send it on now (in the background, bounded)."""
        pipe = self._pipes.get(uuid)
        if pipe is None or not self._usable(pipe):
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
                await asyncio.sleep(min(0.5 * attempt * self.settings.backoff_base_s, 5.0))

    async def _remember(self, pipe: Pipeline) -> None:
        """Persist which node holds which of the images, so that after a crash the task is
        completed there without sending them again.

        One instance: the write happens in the background and coalesces (a writer goes round
        until the record holds the newest state, at most one write per ``RECORD_INTERVAL_S``),
        so no upload waits for the store; ``finish`` and ``close`` wait for it. After a crash
        the record only says which node may hold part of the upload: the dispatch clears it
        there and sends every image afresh (``nodeside``), preferring another node.
        Shared store: written at once under the record lock, since other instances act on it.
        """
        if self.shared:
            async with self._record_lock(pipe.uuid):
                await self._merge_record(pipe)
            return
        pipe.version += 1
        if pipe.writer is None or pipe.writer.done():
            pipe.writer = asyncio.ensure_future(self._write_record(pipe))

    async def _write_record(self, pipe: Pipeline) -> None:
        try:
            while pipe.written < pipe.version:
                wait_s = pipe.last_write + RECORD_INTERVAL_S - time.monotonic()
                if wait_s > 0 and not pipe.hurry.is_set():
                    with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
                        await asyncio.wait_for(pipe.hurry.wait(), wait_s)
                pipe.last_write = time.monotonic()
                version = pipe.version
                record = {"node": pipe.node.key, "sent": sorted(pipe.sent)}
                await self.store.set_meta(PIPELINE_META + pipe.uuid, json.dumps(record))
                pipe.written = version
        except StoreError as e:
            log.warning("task %s: pipeline record not written: %s", pipe.uuid, e.message)

    async def _flush(self, pipe: Pipeline) -> None:
        """Until the record holds every image recorded so far."""
        if pipe.writer is not None:
            pipe.hurry.set()
            await asyncio.shield(pipe.writer)

    async def _merge_record(self, pipe: Pipeline) -> None:
        """Shared store, record lock held: add this instance's images to the record, mark it
        broken if the pipeline failed here, and learn what the other instances recorded."""
        record = await self._read_record(pipe.uuid)
        if record is not None:
            pipe.sent |= record.sent
        broken = (record is not None and record.broken) or pipe.error is not None
        if broken and pipe.error is None:
            pipe.error = NodeRejected("early forwarding ended on another instance", pipe.node.key)
        merged = {"node": pipe.node.key, "sent": sorted(pipe.sent), "broken": broken}
        await self.store.set_meta(PIPELINE_META + pipe.uuid, json.dumps(merged))

    async def _failed(self, pipe: Pipeline) -> None:
        """The pipeline failed on this instance: on a shared store, tell the others."""
        if self.shared:
            with contextlib.suppress(NodeError, StoreError):
                await self._remember(pipe)

    async def abort(self, relay: Relay) -> None:
        """The client's request failed (see ``Relay.fail``)."""
        await relay.abort()
        await self._failed(relay.pipe)

    async def finish(self, uuid: str, files: list[Path], fields: Mapping[str, str]) -> Node:
        """Send what is left, initialise again with the final fields, commit. Raises NodeError;
        either way the pipeline is over (its slot reservation passes to the caller on success).
        """
        pipe = self._pipes.pop(uuid)
        self._opening.pop(uuid, None)
        ok = False
        try:
            if not pipe.joined:
                self._usable(pipe)  # committed after a quiet spell: its slot again, if free
            if pipe.jobs:
                await asyncio.gather(*list(pipe.jobs), return_exceptions=True)
            if pipe.error is None:
                for path in files:
                    if path.name not in pipe.sent:
                        await self._send(pipe, path)
            await self._flush(pipe)  # complete before the node is asked to start the task
            if pipe.error is not None:
                raise pipe.error
            if self.shared or dict(fields) != pipe.fields:  # shared: opened elsewhere
                await self.client.init_task(pipe.node, uuid, dict(fields))
            await self.client.commit(pipe.node, uuid)
            # what the node holds is counted, not trusted: an upload that timed out here may
            # have landed there, and a relay cut off by a frozen node may land late
            await nodeside.verify(self.client, pipe.node, uuid, files)
            ok = True
            return pipe.node
        finally:
            await self._flush(pipe)  # complete before the task moves on (and deletes it)
            # on success the caller drops it once the task is counted on the node
            if not ok and not pipe.joined and not pipe.released:
                self.registry.release(pipe.node.key)

    async def close(self, uuid: str) -> Node | None:
        """Drop a pipeline (upload abandoned, or dispatch falls back); its node, if any."""
        pipe = self._pipes.pop(uuid, None)
        self._opening.pop(uuid, None)
        if pipe is None:
            return None
        pipe.closed = True
        pipe.error = pipe.error or NodeRejected("pipeline closed", pipe.node.key)
        for job in list(pipe.jobs):
            job.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*list(pipe.jobs), return_exceptions=True)
        await self._flush(pipe)  # no write may land after the caller deletes the record
        if not pipe.joined and not pipe.released:
            self.registry.release(pipe.node.key)
        return pipe.node

    def _quiet_for(self, pipe: Pipeline, now: float) -> float:
        if pipe.jobs or pipe.uploads:
            return 0.0
        return now - pipe.last_activity

    def release_idle(self, now: float | None = None) -> list[str]:
        """Give back the slots of uploads that went quiet (module doc); waiting tasks may go."""
        now = time.monotonic() if now is None else now
        limit = self.settings.early_forwarding_idle_s
        quiet = [
            p
            for p in self._pipes.values()
            if not p.released and not p.joined and self._quiet_for(p, now) > limit
        ]
        for pipe in quiet:
            pipe.released = True
            log.info(
                "task %s: upload quiet for %.0f s; slot on %s given back",
                pipe.uuid,
                limit,
                pipe.node.key,
            )
            self.registry.release(pipe.node.key)
        return [p.uuid for p in quiet]

    async def expire(self, now: float | None = None) -> list[str]:
        """Give back the slots of quiet uploads; drop pipelines of uploads long abandoned."""
        now = time.monotonic() if now is None else now
        self.release_idle(now)
        # shared: the record lives on; this instance joins it again at its next upload
        limit = SHARED_IDLE_S if self.shared else IDLE_S
        idle = [u for u, p in self._pipes.items() if self._quiet_for(p, now) > limit]
        for uuid in idle:
            await self.close(uuid)
        return idle

    @property
    def expire_every_s(self) -> float:
        """How often ``expire`` should run to give slots back on time."""
        return min(60.0, max(0.05, self.settings.early_forwarding_idle_s / 4))

    async def close_all(self) -> None:
        for uuid in list(self._pipes):
            await self.close(uuid)
