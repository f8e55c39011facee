"""TaskIntake: ``/task/new/init``, ``upload``, ``commit`` and ``/task/new``, checked and staged.

Staged files live on disk (``Staging``), the upload record in the store, so an upload survives a
crash and can continue after a restart. Commit turns the upload into a task-table entry (written
before the upload record is dropped, so a crash in between loses nothing) and hands it to the
dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from clusterodm.access.base import AccessProvider, User
from clusterodm.access.flood import FloodMonitor, flood_message
from clusterodm.errors import InvalidRequest, LimitExceeded, NoNodeAvailable
from clusterodm.model import StagedUpload, TaskEntry, TaskStage, TaskStatus, is_valid_uuid
from clusterodm.nodes.registry import NodeRegistry
from clusterodm.store.base import Store
from clusterodm.store.staging import Staging
from clusterodm.tasks.concurrency import ConcurrencyGate
from clusterodm.tasks.dispatch import LAUNCHING, node_fields
from clusterodm.tasks.events import TaskEvents
from clusterodm.tasks.limits import check_options, enforce
from clusterodm.tasks.options import Option, apply_splitmerge, parse_options
from clusterodm.tasks.pipeline import PIPELINE_META, Relay, UploadPipelines
from clusterodm.tasks.routes import RouteTable
from clusterodm.tasks.table import TaskTable

log = logging.getLogger(__name__)

INIT_FIELDS = ("name", "options", "skipPostProcessing", "webhook", "outputs", "dateCreated")
OVER_LIMIT_META = "over-limit:"  # store meta key: the upload brought too many images
COMMIT_SETTLE_S = 5.0
"""How long the answer to a commit waits for an early-forwarded task to start on its node."""
SEED_ZIP = "seed.zip"  # split-merge's payload for a submodel task
SPLITMERGE_OFF = "Cannot use this node as a split-merge cluster."  # the original's words


class DispatchSink(Protocol):
    def submit(self, uuid: str) -> None: ...

    async def settle(self, uuid: str, wait_s: float) -> None: ...

    def check_room(self, limit: int | None) -> None: ...

    concurrency_limits: dict[str, int]

    def may_start(self, owner: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class FilePart:
    """One uploaded file as the edge hands it over: its name and a stream of its bytes."""

    filename: str
    chunks: AsyncIterator[bytes]


class UploadBody(Protocol):
    """An upload request's files, parsed as they arrive (for early forwarding: each file is
    relayed to the node while it is staged here)."""

    content_type: str
    content_length: int | None

    @property
    def unread(self) -> bool:
        """Nothing of the body was read yet, so early forwarding can relay every file in it."""
        ...

    def __aiter__(self) -> AsyncIterator[FilePart]: ...


class TaskIntake:
    def __init__(
        self,
        store: Store,
        staging: Staging,
        registry: NodeRegistry,
        routes: RouteTable,
        table: TaskTable,
        access: AccessProvider,
        known_options: Callable[[], Awaitable[list[Option]]],
        dispatcher: DispatchSink,
        splitmerge: bool = True,
        flood: FloodMonitor | None = None,
        max_queue: int | None = None,
        clock: Callable[[], float] = time.time,
        concurrency: ConcurrencyGate | None = None,
    ) -> None:
        self.events = TaskEvents()  # app.py shares the cluster's
        self.store = store
        self.staging = staging
        self.registry = registry
        self.routes = routes
        self.table = table
        self.access = access
        self.known_options = known_options
        self.dispatcher = dispatcher
        self.splitmerge = splitmerge
        self.flood = flood or FloodMonitor(None)
        self.max_queue = max_queue
        self.pipelines: UploadPipelines | None = None
        #: a user at max_concurrent_tasks gets queued, not refused (original: refused); needs
        #: the images of running tasks kept, which is how their tasks are counted
        self.queue_at_limit = False
        self.clock = clock
        self.concurrency = concurrency
        #: several instances on one shared store: they must share the staging folder too
        self.shared = False
        #: open uploads' records, read once (one instance only: with a shared store another
        #: instance may commit the upload, so every request reads the store)
        self._records: dict[str, StagedUpload] = {}

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- upload records: the store, with the open ones kept in memory on a single instance ---

    async def _get_upload(self, uuid: str) -> StagedUpload | None:
        record = self._records.get(uuid)
        if record is None:
            record = await self.store.get_upload(uuid)
            if record is not None and not self.shared:
                self._records[uuid] = record
        return record

    async def _put_upload(self, record: StagedUpload) -> None:
        self._records.pop(record.uuid, None)
        await self.store.put_upload(record)
        if not self.shared:
            self._records[record.uuid] = record

    async def _delete_upload(self, uuid: str) -> None:
        self._records.pop(uuid, None)
        await self.store.delete_upload(uuid)

    async def forget_upload(self, uuid: str) -> None:
        """The stale-upload sweep, once the files are gone: the record and its marks."""
        await self._delete_upload(uuid)
        await self.store.delete_meta(OVER_LIMIT_META + uuid)

    def uuid_in_use(self, uuid: str) -> bool:
        return self.routes.get(uuid) is not None or self.table.get(uuid) is not None

    async def init(self, user: User, fields: Mapping[str, str], set_uuid: str | None) -> str:
        """Check and stage a new task; answers its uuid."""
        if self.registry.reference() is None:
            raise NoNodeAvailable("Cannot create task, no nodes are online.")
        if "zipurl" in fields:
            raise InvalidRequest("zipurl is not supported by this cluster; upload the images.")
        if set_uuid is not None:
            uuid = set_uuid.lower()
            if not is_valid_uuid(uuid) or self.uuid_in_use(uuid):
                raise InvalidRequest(f"Invalid set-uuid: {set_uuid}")
        else:
            uuid = str(uuidlib.uuid4())
        await self._check_concurrency(user)
        options = await self._check_options(user, fields.get("options"))
        if await self.flood.check_init(user.token):
            raise LimitExceeded(flood_message())
        now = self._now_ms()
        kept = _kept_fields(fields, now)
        if ignored := sorted(set(fields) - set(INIT_FIELDS) - {"zipurl"}):
            names = ", ".join(repr(n[:40]) for n in ignored[:10])
            log.info("task %s: fields no node reads are ignored: %s", uuid, names)
        await self.staging.create(uuid)
        existing = await self._get_upload(uuid)
        if existing is not None and existing.owner != user.owner:
            raise InvalidRequest(f"Invalid set-uuid: {set_uuid}")
        files = existing.files if existing else ()
        await self._put_upload(StagedUpload(uuid, user.owner, kept, options, now, now, files))
        log.info("task %s initialised", uuid)
        return uuid

    async def amend(self, user: User, uuid: str, fields: Mapping[str, str]) -> None:
        """Fields that came after the files in a single-request ``/task/new`` (NodeODM takes
        fields in any order)."""
        upload = await self._upload_of(user, uuid)
        merged = {**upload.fields, **_kept_fields(fields, self._now_ms())}
        options = upload.options
        if "options" in fields:
            options = await self._check_options(user, fields["options"])
        await self._put_upload(dataclasses.replace(upload, fields=merged, options=options))

    async def abandon(self, uuid: str) -> None:
        """Forget an upload and its staged files (removed task, failed single-request create)."""
        await self._delete_upload(uuid)
        await self.staging.remove(uuid)
        await self.store.delete_meta(OVER_LIMIT_META + uuid)
        if self.pipelines is not None:
            await self.pipelines.close(uuid)
            await self.store.delete_meta(PIPELINE_META + uuid)

    async def restart_options(self, user: User | None, raw: str) -> list[Option]:
        """New options for a restart of a task the proxy holds: checked as at init."""
        return await self._check_options(user or User(token=""), raw)

    async def _check_options(self, user: User, raw: Any) -> list[Option]:
        options = parse_options(raw)
        if not self.splitmerge:
            options = [o for o in options if o.get("name") != "sm-cluster"]
        if not options and not user.limits.options:
            return []
        return check_options(options, await self.known_options(), user.limits)

    async def _check_concurrency(self, user: User) -> None:
        limit = user.limits.max_concurrent_tasks
        if self.queue_at_limit and limit:
            # over the limit, the task will wait in the queue instead of being refused
            self.dispatcher.concurrency_limits[user.owner] = limit
            return
        if self.concurrency is not None:
            await self.concurrency.check(user.owner, limit)

    async def _admit(self, user: User, task: TaskEntry) -> None:
        """Record a committed task; the concurrent-task limit is checked again under the
        owner's lock, so two commits at once cannot both take the last place."""
        limit = user.limits.max_concurrent_tasks
        if self.queue_at_limit and limit:
            self.dispatcher.concurrency_limits[user.owner] = limit
            await self.table.put(task)
            return
        if self.concurrency is None or limit is None:
            await self.table.put(task)
            return
        async with self.concurrency.lock(user.owner):
            await self._check_concurrency(user)
            await self.table.put(task)

    async def _upload_of(self, user: User, uuid: str) -> StagedUpload:
        upload = await self._get_upload(uuid) if is_valid_uuid(uuid) else None
        if upload is None or upload.owner != user.owner:
            raise InvalidRequest("Invalid uuid (not found)")
        if not self.staging.exists(uuid):
            if self.shared:  # initialised on an instance whose staging folder we cannot see
                raise InvalidRequest(
                    "The staged files of this upload are not visible to this cluster instance: "
                    "instances sharing a --store must share --data-dir (docs/scale-out.md)"
                )
            raise InvalidRequest("Invalid uuid (not found)")
        return upload

    async def check_upload(self, user: User, uuid: str) -> StagedUpload:
        """Refuse an upload before its body is read (unknown uuid)."""
        return await self._upload_of(user, uuid)

    async def upload(self, user: User, uuid: str, body: UploadBody) -> int:
        """Stream files into staging; answers how many were saved.

        With a pipeline open for the upload, the request's files go on to the node as they
        arrive (a relay, each under the name it is staged under); when they cannot (body
        already partly read, upload speed capped), each staged file is sent on from disk.
        """
        upload = await self._upload_of(user, uuid)
        pipelines = await self._pipeline_for(upload)
        relay = None
        if pipelines is not None and body.unread:  # not /task/new: its fields come first
            relay = pipelines.relay(uuid)
        saved: list[tuple[str, str]] = []  # (name sent by the client, name staged)
        busy = pipelines.uploading(uuid) if pipelines is not None else contextlib.nullcontext()
        try:
            with busy:
                await self._save_parts(user, uuid, body, saved, relay)
        except BaseException:
            if relay is not None:
                assert pipelines is not None
                await pipelines.abort(relay)
            raise
        if relay is not None:
            assert pipelines is not None
            await pipelines.relayed(uuid, relay, saved)
        # The staging folder is the record of what arrived: no store write per upload request
        # (a growing file list rewritten 200 times cost a tenth of the proxy's upload CPU).
        return len(saved)

    async def _save_parts(
        self,
        user: User,
        uuid: str,
        body: UploadBody,
        saved: list[tuple[str, str]],
        relay: Relay | None,
    ) -> None:
        max_images = user.limits.max_images
        over = False
        async for part in body:
            if over or (max_images is not None and self.staging.count(uuid) >= max_images):
                over = True  # read to the end and kept nowhere; refused at commit
                async for _ in part.chunks:
                    pass
                continue
            name, chunks = part.filename, part.chunks
            if relay is not None:
                assert self.pipelines is not None
                name = self.pipelines.name(relay, name, self._staged(uuid))
                chunks = _relayed(relay, chunks)
            stored = await self.staging.save(uuid, name, chunks)
            saved.append((part.filename, stored))
            if relay is None and self.pipelines is not None:
                self.pipelines.file_saved(uuid, self.staging.path(uuid) / stored)
        if over:
            await self._note_over_limit(uuid)
            return
        if not saved:
            raise InvalidRequest("Need at least 1 file.")

    def _staged(self, uuid: str) -> Callable[[str], bool]:
        """Whether a file of this name is staged for the upload."""
        folder = self.staging.path(uuid)
        return lambda name: os.path.lexists(folder / name)

    async def _note_over_limit(self, uuid: str) -> None:
        """Images beyond the user's ``max_images`` arrived: the task is refused at commit.

        Not at upload: pyodm sends a refused image five more times, backing off for over a
        minute, before its caller hears of it (it never reads ``noRetry`` from an error);
        a refused commit reaches the caller at once. The extra images are read and dropped.
        """
        log.info("task %s: more images than the user may upload; refused at commit", uuid)
        await self.store.set_meta(OVER_LIMIT_META + uuid, "1")

    async def _pipeline_for(self, upload: StagedUpload) -> UploadPipelines | None:
        """Forward this upload's images while they arrive, when a node is free for it now.

        Never twice for one upload: after a restart the node of a lost pipeline may hold part
        of the images under this uuid, so that upload takes the ordinary path instead.
        """
        pipelines = self.pipelines
        if pipelines is None:
            return None
        if upload.uuid in pipelines:
            return pipelines
        if not self.dispatcher.may_start(upload.owner):
            return None  # at their concurrency limit: the task will queue
        key = PIPELINE_META + upload.uuid
        if not pipelines.shared and await self.store.get_meta(key) is not None:
            return None  # (shared: the record is how instances find the pipeline)
        pipe = await pipelines.open(upload.uuid, node_fields(upload.fields, upload.options))
        return pipelines if pipe is not None else None

    async def _pipeline_node(self, uuid: str) -> str | None:
        """The node this upload was forwarded to early, if any (recorded in the store)."""
        raw = await self.store.get_meta(PIPELINE_META + uuid)
        try:
            node = json.loads(raw).get("node") if raw else None
        except (ValueError, AttributeError):
            return None
        return node if isinstance(node, str) else None

    def _check_some_node_takes(self, images: int) -> None:
        """Refuse a task that no online node accepts for its image count (every one reports a
        smaller ``maxImages``), as the original does; queued, it would wait for ever. Tasks
        for busy nodes still queue, and an autoscaler may start a node that takes it."""
        if getattr(self.dispatcher, "provisioner", None) is not None:
            return
        limits = [
            n.info.max_images for n in self.registry.online_nodes() if not n.locked and n.info
        ]
        if limits and all(m is not None and m < images for m in limits):
            raise NoNodeAvailable("No nodes available")

    async def commit(self, user: User, uuid: str, cluster_url: str) -> str:
        upload = await self._upload_of(user, uuid)
        staged = self.staging.files(uuid)  # listed once: count, seed.zip and size come from it
        images = len(staged)
        if images == 0:
            await self.staging.remove(uuid)
            await self._delete_upload(uuid)
            raise InvalidRequest("Need at least 1 file.")
        if not self.splitmerge and any(f.name == SEED_ZIP for f in staged):
            # refused where the original refuses it: at commit, once for the whole task
            await self.abandon(uuid)
            raise InvalidRequest(SPLITMERGE_OFF)
        limit = user.limits.max_images
        if limit is not None and await self.store.get_meta(OVER_LIMIT_META + uuid) is not None:
            await self.abandon(uuid)
            raise LimitExceeded(f"You can only upload up to {limit} images.")
        if user.limits.max_images is not None and images > user.limits.max_images:
            raise LimitExceeded(
                f"{images} images uploaded, but you can only process up to "
                f"{user.limits.max_images}."
            )
        self._check_some_node_takes(images)
        self.dispatcher.check_room(self.max_queue)
        await self._check_concurrency(user)
        await self.access.approve_task(user, images)
        limited = enforce(upload.options, user.limits)  # again: the limits may have changed
        options = apply_splitmerge(limited, cluster_url, user.token, self.splitmerge)
        fields = upload.fields
        name = fields.get("name")
        task = TaskEntry(
            uuid=uuid,
            owner=user.owner,
            stage=TaskStage.COMMITTED,
            status=TaskStatus.RUNNING,
            name=(name or f"Task of {time.strftime('%Y-%m-%dT%H:%M:%S')}")
            if name is not None
            else None,
            date_created_ms=_date_created(fields.get("dateCreated"), self._now_ms()),
            fields=dict(fields),
            options=options,
            images_count=images,
            output=(LAUNCHING,),
            node_key=await self._pipeline_node(uuid),
        )
        await self._admit(user, task)
        await self._delete_upload(uuid)
        await self.flood.note_commit(user.token)
        if self.pipelines is not None and self.pipelines.shared:
            await self.pipelines.adopt(uuid)  # opened on any instance, finished by this one
        size = await asyncio.to_thread(_total_size, staged)
        self.events.received(uuid, user.name, images, size, task.name)
        self.dispatcher.submit(uuid)
        if task.node_key is not None:
            # Forwarded early: the node holds (nearly) every image and only has to be told to
            # start. The answer waits for that, briefly, so that a client polling at once finds
            # the task running on its node rather than hears of it one poll later.
            await self.dispatcher.settle(uuid, COMMIT_SETTLE_S)
        log.debug("task %s committed with %d images", uuid, images)
        return uuid


def _total_size(files: list[Path]) -> int:
    """Bytes of a task's images, for its ``received`` log line (a stat per file: off the loop)."""
    total = 0
    for path in files:
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


async def _relayed(relay: Relay, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``chunks``, each fed to the relay too; failing the relay the moment the client's body
    breaks off: before staging drops the half file, after which the client may already send
    it again."""
    try:
        async for chunk in chunks:
            await relay.feed(chunk)
            yield chunk
    except BaseException:
        relay.fail()
        raise


def _kept_fields(fields: Mapping[str, Any], now_ms: int) -> dict[str, str]:
    """The fields a node reads, as text; ``dateCreated`` as the integer the cluster keeps, so
    that the node is never sent one it would answer as ``1e+30``."""
    kept = {k: str(v) for k, v in fields.items() if k in INIT_FIELDS}
    if "dateCreated" in kept:
        kept["dateCreated"] = str(_date_created(kept["dateCreated"], now_ms))
    return kept


def _date_created(value: Any, now_ms: int) -> int:
    """Milliseconds as ASCII digits that fit the store's 64-bit integers; else now."""
    if isinstance(value, str) and _DATE_MS.fullmatch(value.strip()):
        return int(value.strip())
    return now_ms


_DATE_MS = re.compile(r"-?[0-9]{1,15}")
