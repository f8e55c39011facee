"""Autoscaler: a machine on demand for a task no node can take, destroyed when the task ends.

Lifecycle, as the original: the dispatcher ``reserve``s room (``machinesLimit`` counts machines
being created plus auto-spawned nodes; the image count must fit ``imageSizeMapping``), then
``provision`` creates a machine (regions tried in turn across ``createRetries``), waits a bounded
time for its NodeODM to answer ``/info`` (else destroys it and the dispatch is retried), and
registers it as an auto-spawned node that takes this one task. The node's ``/commit`` webhook
schedules the teardown ``teardownDelay`` seconds later: the task's final info is kept in the
task table, its route deleted, the machine destroyed. The vacuum (every ``vacuumInterval``)
destroys nodes past ``maxRuntime``, idle past ``maxUploadTime`` or offline for that long.

Better than the original: every machine carries the cluster's tag, and at start-up and in each
vacuum the provider's tagged machines that no record knows are destroyed, so nothing is left
billing the user. State survives a restart: a node's machine record is stored with the node,
machines being created are stored under the ``asr:machines`` meta key, a scheduled teardown is
marked in the node's record and resumed.

Several instances on one shared store (``instance`` set, ``leads`` from the leader lease): a
machine is created by the instance dispatching the task that needs it (one dispatch per task, by
its claim), so one machine per need; ``machinesLimit`` counts in the store (a place per machine
being created, ``Store.reserve``, plus the auto-spawned nodes every instance sees). Machines being
created are recorded per instance (``asr:machines:<instance>``) and the orphan sweep knows all of
them. Everything else runs on the leader only: the start-up clean-up, the vacuum, the orphan
sweep and the teardowns (a ``/commit`` webhook received elsewhere marks the node finished; the
leader tears it down when its delay is over).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from clusterodm.autoscale.base import CloudProvider, Machine, MachineSize, MachineSpec
from clusterodm.autoscale.bootstrap import user_data
from clusterodm.autoscale.config import AsrConfig
from clusterodm.errors import CloudError, ClusterError, NodeError
from clusterodm.model import Node, TaskEntry, TaskStage, TaskStatus
from clusterodm.nodes import paths
from clusterodm.nodes.address import BadAddress, check_hostname
from clusterodm.nodes.client import NodeClient
from clusterodm.nodes.registry import NodeRegistry
from clusterodm.store.base import Store
from clusterodm.tasks.routes import RouteTable
from clusterodm.tasks.table import TaskTable

log = logging.getLogger(__name__)

PENDING_KEY = "asr:machines"
MACHINES_POOL = "asr:machines"  # places in the store: machines being created, all instances
FINISHED_CHECK_S = 5.0  # how often the leader looks for finished machines (shared store)
TAG_KEY = "asr:cluster-tag"
OFFLINE_MSG = "No nodes available (spawned a new node, but the node did not get online)."


@dataclass(frozen=True, slots=True)
class Reservation:
    """Room for one machine, granted by ``reserve``."""

    id: int
    size: MachineSize
    images: int


def vacuum_reason(
    machine: dict[str, Any], online: bool, queue: int, last_refreshed_ms: int, now_ms: int
) -> str | None:
    """Why an auto-spawned node must go now (the original's three rules), or None."""
    created = int(machine.get("created", now_ms))
    max_runtime = float(machine.get("maxRuntime", -1))
    max_upload = float(machine.get("maxUploadTime", -1))
    if online:
        if max_runtime > 0 and now_ms - created > max_runtime * 1000:
            return "it has exceeded its maximum runtime"
        if max_upload > 0 and queue == 0 and now_ms - created > max_upload * 1000:
            return "it has exceeded its maximum upload time"
        return None
    if max_upload > 0 and now_ms - last_refreshed_ms > max_upload * 1000:
        return "it has been offline for too long"
    return None


class Autoscaler:
    """The dispatcher's ``NodeProvisioner`` and the admin's ``ASR VIEWCMD``."""

    def __init__(
        self,
        config: AsrConfig,
        provider: CloudProvider,
        registry: NodeRegistry,
        client: NodeClient,
        routes: RouteTable,
        table: TaskTable,
        store: Store,
        public_url: Callable[[], str],
        release_images: Callable[[str], Awaitable[None]] | None = None,
        check_s3: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
        instance: str = "",
    ) -> None:
        self.config = config
        self.provider = provider
        self.registry = registry
        self.client = client
        self.routes = routes
        self.table = table
        self.store = store
        self.public_url = public_url
        self.release_images = release_images
        self.check_s3 = check_s3
        self.clock = clock
        self.cluster_tag = config.cluster_tag
        self._claims: dict[int, Reservation] = {}
        self._seq = 0
        self._pending: dict[str, dict[str, Any]] = {}  # name -> record, while being created
        self._teardowns: dict[str, asyncio.Task[None]] = {}
        self.downloads: Any = None  # results.S3Downloads for download/<asset>, set by the app
        #: several instances on one store: this one's id, and whether it holds the leader lease
        self.instance = instance
        self.leads: Callable[[], bool] = lambda: True
        self.pending_key = f"{PENDING_KEY}:{instance}" if instance else PENDING_KEY

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- start and stop ----------------------------------------------------------------------
    async def start(self) -> None:
        """Check the provider and S3, then clean up what a previous run left behind."""
        if not self.cluster_tag:
            self.cluster_tag = await self.store.get_meta(TAG_KEY) or ""
        if not self.cluster_tag:
            self.cluster_tag = f"clusterodm-{secrets.token_hex(4)}"
            await self.store.set_meta(TAG_KEY, self.cluster_tag)
        await self.provider.start()
        if self.check_s3 is not None:
            await self.check_s3()
        log.info("autoscaler: %s, cluster tag %s", self.provider.name, self.cluster_tag)
        if self.instance:
            await self._save_pending()
            return  # the clean-up below is the leader's (its vacuum)
        stored = await self.store.get_meta(PENDING_KEY)
        leftovers: dict[str, Any] = json.loads(stored) if stored else {}
        for name, record in leftovers.items():
            if record.get("id"):
                log.warning("autoscaler: destroying %s, left half-created by the last run", name)
                await self._destroy_quietly(_machine_of(record))
        await self._save_pending()
        for node in self.registry.nodes():
            if node.machine is not None and node.machine.get("finished"):
                self._schedule_teardown(node.key, node.machine.get("task"), 0.0)
        await self.sweep_orphans()

    async def run(self) -> None:
        """The vacuum loop; started by the app, cancelled at shutdown. With a shared store only
        the leader vacuums, and it looks for finished machines more often (their webhook may
        have reached another instance)."""
        if not self.instance:
            return await self._run_vacuum()
        last = time.monotonic()
        while True:
            await asyncio.sleep(min(FINISHED_CHECK_S, self.config.vacuum_interval_s))
            if not self.leads():
                continue
            try:
                self._teardown_finished()
                if time.monotonic() - last >= self.config.vacuum_interval_s:
                    last = time.monotonic()
                    await self.vacuum()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("autoscaler: vacuum failed")

    def _teardown_finished(self) -> None:
        """Schedule the teardown of every node whose task finished, when its delay is over."""
        now = self._now_ms()
        for node in self.registry.nodes():
            rec = node.machine
            if rec is None or not rec.get("finished") or node.key in self._teardowns:
                continue
            waited_s = (now - int(rec["finished"])) / 1000
            self._schedule_teardown(
                node.key, rec.get("task"), max(0.0, self.config.teardown_delay_s - waited_s)
            )

    async def _run_vacuum(self) -> None:
        while True:
            await asyncio.sleep(self.config.vacuum_interval_s)
            try:
                await self.vacuum()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("autoscaler: vacuum failed")

    async def close(self) -> None:
        jobs = list(self._teardowns.values())
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        await self.provider.close()

    # --- the dispatcher's seam ---------------------------------------------------------------
    def _machines_in_use(self) -> int:
        return len(self._claims) + sum(1 for n in self.registry.nodes() if n.auto_spawned)

    def can_handle(self, images: int) -> bool:
        return self.config.size_for(images) is not None

    def reserve(self, images: int) -> Reservation | None:
        size = self.config.size_for(images)
        if size is None:
            return None
        limit = self.config.machines_limit
        if limit != -1 and self._machines_in_use() >= limit:
            return None
        self._seq += 1
        claim = Reservation(self._seq, size, images)
        self._claims[claim.id] = claim
        return claim

    def release(self, claim: object) -> None:
        if isinstance(claim, Reservation):
            self._claims.pop(claim.id, None)

    async def confirm(self, claim: object, uuid: str) -> bool:
        """Take the machine's place under ``machinesLimit`` in the store, where every instance
        counts (several instances); False if the cluster is at the limit."""
        limit = self.config.machines_limit
        if limit == -1:
            return True
        spawned = sum(1 for n in self.registry.nodes() if n.auto_spawned)
        hold_s = self.config.create_retries * (self.config.online_timeout_s + 300)
        ok = await self.store.reserve(MACHINES_POOL, uuid, limit - spawned, int(hold_s * 1000))
        if not ok:
            self.release(claim)
        return ok

    async def provision(self, claim: object, uuid: str, images: int) -> Node:
        if not isinstance(claim, Reservation) or claim.id not in self._claims:
            raise CloudError("This machine reservation is no longer valid")
        try:
            return await self._create_node(claim, uuid)
        finally:
            self._claims.pop(claim.id, None)
            if self.instance:  # a created node counts as auto-spawned from now on
                with contextlib.suppress(ClusterError):
                    await self.store.unreserve(MACHINES_POOL, uuid)

    async def discard(self, node_key: str) -> None:
        node = self.registry.get(node_key)
        if node is not None and node.auto_spawned:
            log.warning("autoscaler: %s could not take its task; destroying it", node_key)
            await self._teardown(node_key)

    # --- creating ----------------------------------------------------------------------------
    def _spec(self, size: MachineSize, attempt: int, images: int, token: str) -> MachineSpec:
        name = f"clusterodm-{images}-{secrets.token_hex(5)}"
        base = MachineSpec(
            name=name,
            size=size,
            region=self.config.region_for(attempt),
            token=token,
            webhook=self.public_url().rstrip("/") + "/commit",
            user_data="",
            cluster_tag=self.cluster_tag,
        )
        return _with_user_data(base, user_data(self.config, base))

    async def _create_node(self, claim: Reservation, uuid: str) -> Node:
        retries = self.config.create_retries
        last = "no attempt made"
        for attempt in range(1, retries + 1):
            spec = self._spec(claim.size, attempt, claim.images, secrets.token_urlsafe(18))
            log.info(
                "autoscaler: creating %s (%s in %s) for task %s, attempt %d of %d",
                spec.name, spec.size.slug, spec.region, uuid, attempt, retries,
            )  # fmt: skip
            await self._remember(spec.name, {"name": spec.name, "region": spec.region})
            try:
                machine = await self.provider.create(spec)
            except CloudError as e:
                last = self.config.mask(e.message)
                log.warning("autoscaler: cannot create %s: %s", spec.name, last)
                await self._forget(spec.name)
                if attempt < retries:
                    await asyncio.sleep(self.config.retry_sleep_s(attempt))
                continue
            except BaseException:
                await self._forget(spec.name)  # the orphan sweep collects it if it exists
                raise
            await self._remember(spec.name, _record_of(machine))
            try:
                return await self._bring_online(machine, spec, uuid)
            except BaseException:
                await asyncio.shield(self._destroy_quietly(machine))
                raise
            finally:
                await self._forget(spec.name)
        raise CloudError(f"Cannot create machine (attempted {retries} times): {last}")

    async def _bring_online(self, machine: Machine, spec: MachineSpec, uuid: str) -> Node:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.online_timeout_s
        while True:
            machine = await self.provider.locate(machine)
            if machine.host:
                host = _node_host(machine.host, spec.name)
                probe = Node(host, machine.port, spec.token)
                try:
                    info = await self.client.info(probe)
                    break
                except NodeError:
                    pass
            if loop.time() >= deadline:
                log.warning("autoscaler: %s did not come online in time", spec.name)
                raise CloudError(OFFLINE_MSG)
            await asyncio.sleep(self.config.poll_interval_s)
        record = {
            **_record_of(machine),
            "provider": self.provider.name,
            "size": spec.size.slug,
            "created": self._now_ms(),
            "maxRuntime": self.config.max_runtime_s,
            "maxUploadTime": self.config.max_upload_time_s,
            "task": uuid,
        }
        try:
            node = await self.registry.add(host, machine.port, spec.token, machine=record)
        except ClusterError as e:
            raise CloudError(f"Cannot register the new node: {e.message}") from e
        await self.registry.record_info(node.key, info)
        log.info("autoscaler: %s is online as node %s", spec.name, node.key)
        return self.registry.get(node.key) or node

    # --- tearing down ------------------------------------------------------------------------
    async def on_commit(self, uuid: str) -> bool:
        """A node reported ``uuid`` finished: schedule its teardown if it is auto-spawned."""
        route = self.routes.get(uuid)
        node = self.registry.get(route.node_key) if route is not None else None
        if node is None or node.machine is None:
            return False
        record = {**node.machine, "finished": self._now_ms(), "task": uuid}
        await self.registry.set_machine(node.key, record)
        if self.leads():  # else the leader sees the mark (``run``)
            self._schedule_teardown(node.key, uuid, self.config.teardown_delay_s)
        return True

    def _schedule_teardown(self, node_key: str, uuid: str | None, delay_s: float) -> None:
        job = self._teardowns.get(node_key)
        if job is not None and not job.done():
            return
        log.info("autoscaler: tearing down %s in %g s", node_key, delay_s)
        job = asyncio.create_task(self._finish_later(node_key, uuid, delay_s))
        self._teardowns[node_key] = job
        job.add_done_callback(lambda j: self._job_done(node_key, j))

    def _job_done(self, node_key: str, job: asyncio.Task[None]) -> None:
        if self._teardowns.get(node_key) is job:
            del self._teardowns[node_key]

    async def _finish_later(self, node_key: str, uuid: str | None, delay_s: float) -> None:
        try:
            await asyncio.sleep(delay_s)
            if uuid:
                await self._keep_task_info(node_key, uuid)
            await self._teardown(node_key)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("autoscaler: teardown of %s failed", node_key)

    async def _keep_task_info(self, node_key: str, uuid: str) -> None:
        """Store the task's final info in the task table, then drop the route to the node."""
        node, route = self.registry.get(node_key), self.routes.get(uuid)
        if node is None or route is None or route.node_key != node_key:
            return
        try:
            info = await self.client.task_info(node, uuid)
            output = await self.client.get_json(node, paths.task(uuid, "output"), {"line": "0"})
        except NodeError as e:
            log.warning("autoscaler: cannot keep the info of task %s: %s", uuid, e.message)
            return
        entry = _finished_entry(uuid, route.owner, info, output, self._now_ms())
        if self.release_images is not None:
            await self.release_images(uuid)
        await self.table.put(entry)
        await self.routes.delete(uuid)

    async def _teardown(self, node_key: str) -> None:
        node = self.registry.get(node_key)
        if node is None or node.machine is None:
            return
        try:
            await self.provider.destroy(_machine_of(node.machine, node))
        except CloudError as e:
            log.error("autoscaler: cannot destroy %s: %s", node_key, self.config.mask(e.message))
            await self.registry.set_machine(node_key, {**node.machine, "teardown": True})
            return
        self.routes.forget_node(node_key)
        await self.registry.remove(node_key)
        log.info("autoscaler: destroyed %s (%s)", node.machine.get("name", ""), node_key)

    # --- vacuum ------------------------------------------------------------------------------
    async def vacuum(self) -> list[str]:
        """Apply the vacuum rules, then destroy orphans; the node keys torn down."""
        now = self._now_ms()
        gone: list[str] = []
        for node in self.registry.nodes():
            rec = node.machine
            if rec is None or node.key in self._teardowns:
                continue
            if rec.get("finished"):
                self._schedule_teardown(node.key, rec.get("task"), 0.0)
                continue
            queue = node.info.task_queue_count if node.info else 0
            online = self.registry.is_online(node)
            why = vacuum_reason(rec, online, queue, node.last_refreshed_ms, now)
            if why is None and rec.get("teardown"):
                why = "an earlier attempt to destroy it failed"
            if why is not None:
                log.warning("autoscaler: %s will be destroyed: %s", node.key, why)
                await self._teardown(node.key)
                gone.append(node.key)
        await self.sweep_orphans()
        return gone

    async def sweep_orphans(self) -> list[Machine]:
        """Destroy this cluster's machines that no node and no creation in progress knows."""
        known = {str(n.machine.get("id")) for n in self.registry.nodes() if n.machine}
        pending = dict(self._pending)
        if self.instance:  # machines other instances are creating
            for raw in (await self.store.list_meta(PENDING_KEY)).values():
                with contextlib.suppress(ValueError, AttributeError):
                    pending.update(json.loads(raw))
        known |= {str(r.get("id")) for r in pending.values() if r.get("id")}
        try:
            tagged = await self.provider.list_tagged(self.cluster_tag)
        except CloudError as e:
            log.error("autoscaler: cannot list machines: %s", self.config.mask(e.message))
            return []
        orphans = [m for m in tagged if m.id not in known and m.name not in pending]
        for machine in orphans:
            log.warning("autoscaler: destroying orphan machine %s (%s)", machine.name, machine.id)
            await self._destroy_quietly(machine)
        return orphans

    async def _destroy_quietly(self, machine: Machine) -> None:
        try:
            await self.provider.destroy(machine)
        except CloudError as e:
            log.error(
                "autoscaler: cannot destroy %s (%s): %s; check it by hand",
                machine.name, machine.id, self.config.mask(e.message),
            )  # fmt: skip

    async def _remember(self, name: str, record: dict[str, Any]) -> None:
        self._pending[name] = {**self._pending.get(name, {}), **record}
        await self._save_pending()

    async def _forget(self, name: str) -> None:
        if self._pending.pop(name, None) is not None:
            await self._save_pending()

    async def _save_pending(self) -> None:
        await self.store.set_meta(self.pending_key, json.dumps(self._pending))

    # --- admin -------------------------------------------------------------------------------
    def view_command(self, images: int) -> str:
        """What would be created for ``images`` images; secrets masked."""
        size = self.config.size_for(images)
        if size is None:
            return f"Cannot handle {images} images."
        spec = self._spec(size, 1, images, "NODE-TOKEN")
        lines = [
            f"provider: {self.provider.name}",
            f"size: {size.slug} (up to {size.max_images} images)",
            f"region: {spec.region}",
            f"name: {spec.name}",
            f"cluster tag: {self.cluster_tag}",
            *self.provider.describe(spec),
        ]
        if self.provider.name not in ("local", "slurm"):
            lines += ["user data:", spec.user_data.rstrip("\n")]
        return self.config.mask("\n".join(lines)).replace("NODE-TOKEN", "***")


def _with_user_data(spec: MachineSpec, script: str) -> MachineSpec:
    return dataclasses.replace(spec, user_data=script)


def _record_of(machine: Machine) -> dict[str, Any]:
    return {
        "id": machine.id,
        "name": machine.name,
        "region": machine.region,
        **({"extra": machine.extra} if machine.extra else {}),
    }


def _machine_of(record: dict[str, Any], node: Node | None = None) -> Machine:
    return Machine(
        id=str(record.get("id", "")),
        name=str(record.get("name", "")),
        region=str(record.get("region", "")),
        host=node.hostname if node else "",
        port=node.port if node else 0,
        extra=dict(record.get("extra") or {}),
    )


def _finished_entry(
    uuid: str, owner: str, info: dict[str, Any], output: Any, now_ms: int
) -> TaskEntry:
    raw_status = info.get("status")
    status: dict[str, Any] = raw_status if isinstance(raw_status, dict) else {}
    try:
        code = TaskStatus(int(status.get("code", TaskStatus.COMPLETED)))
    except ValueError:
        code = TaskStatus.COMPLETED
    processing = info.get("processingTime")
    started = now_ms - int(processing) if isinstance(processing, int | float) else None
    return TaskEntry(
        uuid=uuid,
        owner=owner,
        stage=TaskStage.FINISHED,
        status=code,
        name=info.get("name"),
        date_created_ms=int(info.get("dateCreated") or now_ms),
        fields={},
        options=list(info.get("options") or []),
        images_count=int(info.get("imagesCount") or 0),
        output=tuple(str(x) for x in output) if isinstance(output, list) else (),
        error_message=status.get("errorMessage"),
        started_ms=started,
        progress=float(info.get("progress") or 100.0),
    )


def _node_host(address: str, name: str) -> str:
    """The node host name for a provider's machine address (IPv6 in brackets), checked as any
    node's is; CloudError when the provider hands back something that cannot be one."""
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    try:
        return check_hostname(address)
    except BadAddress as e:
        log.warning("autoscaler: %s has an unusable address: %s", name, e.message)
        raise CloudError(f"Machine {name} has an unusable address") from None
