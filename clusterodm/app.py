"""Composition root: builds every part, wires them, starts a site per port, stops in order.

The only module that knows both the edge and the adapters. ``Cluster`` is what production
(``run``) and the tests (``start_cluster``) both use, so tests exercise the real wiring.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import Counter

from clusterodm import __version__
from clusterodm import log as logsetup
from clusterodm.access.base import AccessProvider
from clusterodm.access.flood import FloodMonitor
from clusterodm.access.guard import FailedTokenGuard
from clusterodm.access.lightning import LightningAccess
from clusterodm.access.local import LocalAccess
from clusterodm.access.users import UsersAccess
from clusterodm.autoscale import AsrConfig, Autoscaler, load_asr_config, make_provider
from clusterodm.compat import Runner
from clusterodm.config import Settings, parse_dns_server
from clusterodm.errors import StartupError, StoreError
from clusterodm.metrics import Metrics
from clusterodm.model import Route
from clusterodm.nodes.client import NodeClient
from clusterodm.nodes.discovery import Discovery
from clusterodm.nodes.health import HealthMonitor
from clusterodm.nodes.ratelimit import RateLimiter
from clusterodm.nodes.registry import NodeRegistry
from clusterodm.nodes.resolver import DnsResolver
from clusterodm.proxy import front as front_mod
from clusterodm.proxy.deps import DEPS, OptionsCache, ProxyDeps
from clusterodm.proxy.endpoints import ROUTES
from clusterodm.proxy.front_polls import PollAnswerer, poll_answerer
from clusterodm.proxy.middleware import proxy_middleware
from clusterodm.results import S3Access, S3Downloads, check_bucket
from clusterodm.store.base import Store
from clusterodm.store.legacy import import_legacy
from clusterodm.store.redis import RedisStore
from clusterodm.store.sqlite import DEFAULT_FILENAME, SqliteStore
from clusterodm.store.staging import Staging
from clusterodm.tasks.actions import TaskActions
from clusterodm.tasks.concurrency import ConcurrencyGate, status_code
from clusterodm.tasks.dispatch import Dispatcher
from clusterodm.tasks.failover import FailoverMonitor
from clusterodm.tasks.intake import TaskIntake
from clusterodm.tasks.pipeline import UploadPipelines
from clusterodm.tasks.routes import RouteTable
from clusterodm.tasks.scaleout import ScaleOut, stop_if_cancelled
from clusterodm.tasks.table import TaskTable

log = logging.getLogger(__name__)

ROUTE_FLUSH_S = 30.0
#: connections waiting to be accepted; aiohttp's 128 drops connects when a thousand pollers
#: start at once, and a dropped SYN costs the client seconds (the kernel caps it at somaxconn)
LISTEN_BACKLOG = 2048
SWEEP_EVERY_S = 3600.0


def build_access(settings: Settings) -> AccessProvider:
    """``--users`` (named tokens with limits), ``lightning`` (external service) or ``local``."""
    if settings.users_file:
        return UsersAccess(settings.users_file)
    if settings.cloud_provider == "lightning":
        return LightningAccess(settings.lightning_url, settings.lightning, cache=not settings.debug)
    return LocalAccess(settings.token)


def build_store(settings: Settings) -> Store:
    """``--store redis://...`` shares the state in Redis; by default SQLite in ``--data-dir``."""
    if settings.store:
        return RedisStore(settings.store)
    return SqliteStore(settings.data_dir / DEFAULT_FILENAME)


def build_concurrency(
    registry: NodeRegistry, client: NodeClient, routes: RouteTable, table: TaskTable
) -> ConcurrencyGate:
    async def status_of(route: Route) -> int | None:
        node = registry.get(route.node_key)
        if node is None or not registry.is_online(node):
            return None
        return status_code(await client.task_info(node, route.uuid))

    return ConcurrencyGate(table.all, routes.all, status_of)


def build_discovery(settings: Settings, deps: ProxyDeps, store: Store) -> Discovery | None:
    """``--nodes-from``: DNS names whose addresses are nodes (nodes/discovery.py). Without
    it, a cluster of its own still drains the nodes a former ``--nodes-from`` found; with a
    shared store that is left to the instances that have the flag."""
    sources = settings.discovery_sources()
    leftovers = not isinstance(store, RedisStore) and any(
        n.discovered for n in deps.registry.nodes()
    )
    if not sources and not leftovers:
        return None
    server = parse_dns_server(settings.dns_server) if settings.dns_server else None
    discovery = Discovery(
        sources,
        DnsResolver(server, settings.dns_timeout_s),
        deps.registry,
        deps.client,
        deps.routes,
        deps.table,
        store.list_routes,
        settings.discovery_interval_s,
        # an offline draining node leaves once failover could have moved its tasks
        settings.failover.grace_s + settings.failover.check_s,
    )
    discovery.on_added = deps.health.wake
    return discovery


def build_proxy_app(deps: ProxyDeps, metrics: Metrics) -> web.Application:
    app = web.Application(middlewares=[proxy_middleware(metrics)], client_max_size=1 << 20)
    app[DEPS] = deps
    app.add_routes(ROUTES)
    return app


@dataclass
class Cluster:
    """A whole running cluster: state, use cases, background loops and listening sites."""

    settings: Settings
    store: Store
    deps: ProxyDeps
    staging: Staging
    failover: FailoverMonitor | None = None
    metrics: Metrics = field(default_factory=Metrics)
    runners: list[web.BaseRunner] = field(default_factory=list)
    sites: dict[str, web.TCPSite] = field(default_factory=dict)
    loops: list[asyncio.Task[None]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. "admin-cli": the AdminCli

    @property
    def registry(self) -> NodeRegistry:
        return self.deps.registry

    @property
    def port(self) -> int:
        return self.sites["proxy"].port

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.ssl and self.settings.secure_port is None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def site_port(self, name: str) -> int | None:
        site = self.sites.get(name)
        return site.port if site else None

    async def add_site(
        self,
        name: str,
        app: web.Application,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        front: front_mod.Answerer | None = None,
        polls: PollAnswerer | None = None,
    ) -> web.TCPSite:
        """A site per port; ``front``: plain-HTTP ``GET /info`` answered by ``proxy/front.py``,
        and with ``polls`` task polls too."""
        # the access log costs a line per request: only at --log-level verbose or below
        access = logging.getLogger("aiohttp.access") if logsetup.access_log_enabled() else None
        runner = web.AppRunner(
            app,
            access_log=access,
            access_log_class=logsetup.AccessLog,
            handler_cancellation=False,
            shutdown_timeout=SHUTDOWN_GRACE_S / 3,
        )
        await runner.setup()
        self.runners.append(runner)
        site = front_mod.site(
            runner,
            self.settings.bind,
            port,
            backlog=LISTEN_BACKLOG,
            ssl_context=ssl_context,
            answer=front,
            poll=polls,
        )
        try:
            await site.start()
        except OSError as e:
            flag = SITE_FLAGS.get(name, "--port")
            raise StartupError(f"{flag} {port}: cannot listen on it: {_reason(e)}") from None
        self.sites[name] = site
        return site

    def background(self, coro: Awaitable[None], name: str) -> None:
        self.loops.append(asyncio.ensure_future(coro))
        self.loops[-1].set_name(name)

    async def stop(self) -> None:
        for closer in reversed(self.closers):
            with contextlib.suppress(Exception):
                await closer()
        for runner in reversed(self.runners):
            await runner.cleanup()
        await cancel_all(self.loops)
        await self.deps.dispatcher.close()
        with contextlib.suppress(Exception):
            await self.deps.routes.flush()
        await self.deps.client.close()
        await self.store.close()


async def cancel_all(tasks: list[asyncio.Task[None]], again_s: float = 1.0) -> None:
    """Cancel ``tasks`` and wait for them to end. A cancel can be lost inside a library (on
    Python 3.11 a cancel that meets an expiring ``asyncio.timeout``, as in a Redis read, comes
    out as a timeout): a task still running after ``again_s`` is cancelled again."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_s)
    await asyncio.gather(*tasks, return_exceptions=True)


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(settings.ssl_cert, settings.ssl_key)
    return ctx


async def _every(interval_s: float, work: Callable[[], Awaitable[Any]], what: str) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await work()
        except Exception:
            stop_if_cancelled()
            log.exception("%s failed", what)


def build_s3_downloads(settings: Settings, asr: AsrConfig) -> S3Downloads | None:
    """``--downloads-from-s3`` or the autoscaler's bucket; presigned links for private ACLs."""
    s3 = asr.s3
    base = settings.downloads_from_s3 or (s3.downloads_base_url if s3 is not None else "")
    if not base:
        return None
    if s3 is None or s3.public:
        return S3Downloads(base)
    return S3Downloads(base, _s3_access(asr))


def _s3_access(asr: AsrConfig) -> S3Access | None:
    s3 = asr.s3
    if s3 is None:
        return None
    region = str(asr.get("s3.region", "") or "")
    return S3Access(
        s3.endpoint_url, s3.bucket, s3.access_key, s3.secret_key, not s3.ignore_ssl, region
    )


async def start_autoscaler(cluster: Cluster, asr: AsrConfig) -> Autoscaler:
    """Build the autoscaler, check its provider and S3, plug it into dispatch and admin."""
    d = cluster.deps
    s3 = _s3_access(asr)
    scaleout = cluster.extra.get("scale-out")
    assert scaleout is None or isinstance(scaleout, ScaleOut)

    def public_url() -> str:
        if cluster.settings.public_address:
            return cluster.settings.public_address
        port = cluster.port if "proxy" in cluster.sites else cluster.settings.port
        return f"http://127.0.0.1:{port}"

    async def check_s3() -> None:
        if s3 is not None:
            await asyncio.to_thread(check_bucket, s3)

    autoscaler = Autoscaler(
        asr,
        make_provider(asr),
        d.registry,
        d.client,
        d.routes,
        d.table,
        cluster.store,
        public_url,
        release_images=d.dispatcher.release_images,
        check_s3=check_s3,
        instance=scaleout.instance_id if scaleout is not None else "",
    )
    if scaleout is not None:  # one machine per need; the housekeeping is the leader's
        autoscaler.leads = scaleout.leads
    autoscaler.downloads = build_s3_downloads(cluster.settings, asr)
    await autoscaler.start()
    cluster.closers.append(autoscaler.close)
    d.dispatcher.provisioner = autoscaler
    cluster.extra["autoscaler"] = autoscaler
    cluster.background(autoscaler.run(), "autoscaler vacuum")
    if not cluster.settings.public_address and asr.provider not in ("local", "slurm"):
        log.warning("autoscaler: set --public-address so cloud nodes can reach /commit")
    return autoscaler


async def start_cluster(settings: Settings) -> Cluster:
    """Build and start everything; the caller owns ``stop()``."""
    logsetup.quiet_bad_requests()
    asr = load_asr_config(settings.asr) if settings.asr else None
    data_dir = settings.data_dir
    await asyncio.to_thread(_writable_dir, data_dir)
    store = build_store(settings)
    try:
        await store.open()
    except StoreError as e:
        flag = f"--store {settings.store}" if settings.store else f"--data-dir {data_dir}"
        raise StartupError(f"{flag}: {e.message}") from None
    try:
        await import_legacy(data_dir, store)  # logs what it imported, once
    except BaseException:
        await store.close()
        raise

    limiter = RateLimiter(settings.upload_max_speed) if settings.upload_max_speed else None
    client = NodeClient(settings.timeouts, limiter)
    await client.start()
    registry = NodeRegistry(store, settings.online_window_s)
    await registry.load()
    routes = RouteTable(store)
    await routes.load()
    table = TaskTable(store)
    await table.load()
    staging = Staging(data_dir / "uploads")
    health = HealthMonitor(registry, client, settings.refresh_interval_s)
    dispatcher = Dispatcher(
        registry,
        client,
        routes,
        table,
        staging,
        settings.dispatch,
        on_node_failure=registry.record_failure,
        on_waiting=health.wake,
    )
    registry.listeners.append(dispatcher.wake)
    dispatcher.recount = health.refresh_all  # at a dispatch that finds every node full
    failover = FailoverMonitor(registry, client, routes, table, dispatcher, settings.failover)
    access = build_access(settings)
    options = OptionsCache(registry, client, 0.0 if settings.debug else settings.options_cache_s)
    intake = TaskIntake(
        store,
        staging,
        registry,
        routes,
        table,
        access,
        options.get,
        dispatcher,
        splitmerge=not settings.no_splitmerge,
        flood=FloodMonitor(settings.flood_limit),
        concurrency=build_concurrency(registry, client, routes, table),
        max_queue=settings.max_queue,
    )
    actions = TaskActions(
        registry, client, routes, table, dispatcher, intake, per_user=access.per_user
    )
    deps = ProxyDeps(
        settings,
        registry,
        client,
        health,
        routes,
        table,
        intake,
        dispatcher,
        access,
        options,
        actions,
    )
    deps.guard = FailedTokenGuard(settings.auth_fail_limit, settings.auth_fail_window_s)
    dispatcher.events = intake.events = actions.events = failover.events = deps.events
    cluster = Cluster(settings, store, deps, staging)
    if isinstance(access, LightningAccess):
        cluster.closers.append(access.close)
    cluster.failover = failover
    intake.queue_at_limit = settings.dispatch.keep_images_bytes > 0
    scaleout = share(cluster) if isinstance(store, RedisStore) else None
    if settings.dispatch.early_forwarding:
        pipelines = UploadPipelines(
            registry, client, settings.dispatch, lambda: dispatcher.queue_length() == 0, store
        )
        if scaleout is not None:
            assert isinstance(store, RedisStore)
            pipelines.share(store, scaleout.instance_id)
        intake.pipelines = dispatcher.pipelines = pipelines
        dispatcher.store = store
        cluster.closers.append(pipelines.close_all)
        cluster.background(
            _every(pipelines.expire_every_s, pipelines.expire, "pipeline expiry"), "pipelines"
        )
    deps.discovery = discovery = build_discovery(settings, deps, store)
    if discovery is not None and scaleout is not None:
        discovery.leads = scaleout.leads  # one instance looks up; all read the shared list
    watch(cluster)
    try:
        if scaleout is not None:
            await scaleout.recover()  # the store's marker as this instance starts
            await scaleout.hold_lease()
            cluster.closers.append(scaleout.close)
            cluster.background(scaleout.run_lease(), "leader lease")
            cluster.background(scaleout.run_events(), "instance notices")
            cluster.background(scaleout.run_scan(), "shared state scan")
        if discovery is not None:
            await discovery.resolve_once()  # each lookup bounded; a failure is only logged
        await health.refresh_all()
        if asr is not None:
            await start_autoscaler(cluster, asr)
        resumed = await dispatcher.resume()
        if resumed:
            log.info("resuming %d unfinished dispatches", resumed)
        cluster.background(health.run(), "health")
        if discovery is not None:
            cluster.background(discovery.run(), "discovery")
        if isinstance(access, UsersAccess):
            cluster.background(access.watch(settings.users_reload_s), "users file")
        cluster.background(failover.run(), "failover")
        cluster.background(watch_tasks(cluster), "task events")
        cluster.background(_every(ROUTE_FLUSH_S, routes.flush, "route flush"), "route flush")
        cluster.background(_every(SWEEP_EVERY_S, lambda: sweep(cluster), "sweep"), "sweep")
        await sweep(cluster)

        proxy_app = build_proxy_app(deps, cluster.metrics)
        ctx = _ssl_context(settings) if settings.ssl else None
        # the front writes no access log lines: with the access log on, aiohttp answers all
        lean = front_mod.enabled() and not logsetup.access_log_enabled()
        front = front_mod.info_answerer(deps, cluster.metrics) if lean else None
        polls = poll_answerer(deps, cluster.metrics) if lean else None
        if ctx is not None and settings.secure_port is not None:
            await cluster.add_site("proxy", proxy_app, settings.port, front=front, polls=polls)
            await cluster.add_site(
                "secure", build_proxy_app(deps, cluster.metrics), settings.secure_port, ctx
            )
        else:
            await cluster.add_site("proxy", proxy_app, settings.port, ctx, front=front, polls=polls)
        await start_admin(cluster)
    except BaseException:
        await cluster.stop()
        raise
    log.info("ClusterODM %s listening on port %d", __version__, cluster.port)
    return cluster


def share(cluster: Cluster) -> ScaleOut:
    """Several instances on one Redis: claims, leader, notices (docs/scale-out.md)."""
    d, store = cluster.deps, cluster.store
    assert isinstance(store, RedisStore)
    scaleout = ScaleOut(
        store, store, d.registry, d.routes, d.table, d.dispatcher, cluster.settings.scale_out
    )
    d.registry.announce = d.routes.announce = d.actions.announce = scaleout.announce
    d.dispatcher.claims = scaleout.claims
    # one queue, one count of slots and of users' tasks for the whole cluster
    d.dispatcher.shared = store
    d.dispatcher.place_hold_s = cluster.settings.scale_out.claim_ttl_s
    scaleout.on_busy = d.health.wake
    d.intake.flood = FloodMonitor(cluster.settings.flood_limit, time.time, store)
    if d.intake.concurrency is not None:
        d.intake.concurrency.shared_lock = scaleout.owner_lock
        d.intake.concurrency.before_count = scaleout.reread_tasks
    d.health.leads = scaleout.leads
    if cluster.failover is not None:
        cluster.failover.leads = scaleout.leads
    d.intake.shared = True
    cluster.extra["scale-out"] = scaleout
    log.info("instance %s sharing %s", scaleout.instance_id, store.location)
    return scaleout


def watch(cluster: Cluster) -> None:
    """Connect the metrics to the parts they describe."""
    m, d = cluster.metrics, cluster.deps
    d.dispatcher.metrics = m
    if cluster.failover is not None:
        cluster.failover.metrics = m
    reg = d.registry
    m.gauge("clusterodm_nodes", "Nodes in the cluster", lambda: len(reg.nodes()))
    m.gauge("clusterodm_nodes_online", "Nodes online", lambda: len(reg.online_nodes()))
    m.gauge(
        "clusterodm_slots_available",
        "Free task slots on online, unlocked nodes",
        lambda: sum(reg.slots(n) for n in reg.online_nodes() if not (n.locked or n.draining)),
    )
    m.gauge(
        "clusterodm_nodes_discovered",
        "Nodes found by --nodes-from (draining ones included)",
        lambda: sum(1 for n in reg.nodes() if n.discovered),
    )
    m.gauge("clusterodm_queue_length", "Tasks waiting at the proxy", d.dispatcher.queue_length)
    m.gauge("clusterodm_queue_images", "Images of the tasks waiting", d.dispatcher.queue_images)
    m.gauge("clusterodm_routes", "Tasks routed to a node", lambda: len(d.routes))
    m.gauge("clusterodm_tasks_held", "Tasks the proxy answers for", lambda: len(d.table.all()))
    m.gauge(
        "clusterodm_autoscaler_machines",
        "Machines started by the autoscaler",
        lambda: sum(1 for n in reg.nodes() if n.auto_spawned),
    )


async def watch_tasks(cluster: Cluster) -> None:
    """Follow the tasks sent to nodes (their events in the log) and sample the cluster's
    time series for the admin page's charts."""
    d, s, m = cluster.deps, cluster.settings, cluster.metrics
    events = d.events
    last_sample = float("-inf")

    def total(counter: Counter) -> float:
        # read from the counter itself: the registry's lookup would collect every metric
        return next(
            s.value for mf in counter.collect() for s in mf.samples if s.name.endswith("_total")
        )

    while True:
        try:
            await events.watch_once(d.client, d.registry.get)
            now = time.time()
            if now - last_sample >= events.series.step_s:
                events.series.sample(
                    now,
                    d.dispatcher.queue_length(),
                    events.running_count(),
                    total(m.bytes_received),
                    total(m.bytes_sent),
                )
                last_sample = now
        except Exception:
            stop_if_cancelled()
            log.exception("task events round failed")
        await asyncio.sleep(s.task_watch_s)


async def start_admin(cluster: Cluster) -> None:
    """Admin CLI and admin web, each on its own port (0 = off), sharing one AdminCommands."""
    from clusterodm.admin import AdminCommands, build_admin_app, start_cli

    s = cluster.settings
    commands = AdminCommands(cluster.deps, cluster.extra.get("autoscaler"))
    if s.admin_cli_port:
        try:
            cli = await start_cli(
                commands,
                s.bind,
                s.admin_cli_port,
                s.admin_pass,
                idle_timeout_s=s.admin_cli_idle_s,
                max_per_address=s.admin_cli_max_per_address,
            )
        except OSError as e:
            msg = f"--admin-cli-port {s.admin_cli_port}: cannot listen on it: {_reason(e)}"
            raise StartupError(msg) from None
        cluster.extra["admin-cli"] = cli
        cluster.closers.append(cli.close)
    if s.admin_web_port:
        web_app = build_admin_app(commands, s.admin_pass, cluster.metrics)
        await cluster.add_site("admin-web", web_app, s.admin_web_port)


async def sweep(cluster: Cluster) -> None:
    """Delete stale staged uploads (original: 48 h always, plus --stale-uploads-timeout).

    With several instances the staging folder is shared: only the leader sweeps it.
    """
    scaleout = cluster.extra.get("scale-out")
    if isinstance(scaleout, ScaleOut) and not scaleout.leads():
        return
    s = cluster.settings
    held = {t.uuid for t in cluster.deps.table.entries()}
    idle = s.stale_uploads_timeout_h * 3600 if s.stale_uploads_timeout_h > 0 else None
    removed = await cluster.staging.sweep(time.time(), s.stale_uploads_max_age_s, idle, held)
    for uuid in removed:
        await cluster.deps.intake.forget_upload(uuid)


#: a stop signal ends the process within this long, even when the clean stop cannot finish
SHUTDOWN_GRACE_S = 30.0


def on_stop_signal(
    loop: asyncio.AbstractEventLoop, stop: asyncio.Event, grace_s: float = SHUTDOWN_GRACE_S
) -> Callable[[int, Any], None]:
    """A handler for SIGTERM/SIGINT: asks the loop to stop cleanly, and ends the process after
    ``grace_s`` whatever the loop is doing (a second signal ends it at once).

    It is a plain ``signal.signal`` handler, not ``loop.add_signal_handler``: Python runs it
    between two bytecodes of the main thread, so it still works if a request keeps the event
    loop from ever reaching its next poll, and the timer is a thread of its own.
    """
    state = {"signals": 0}

    def handler(signum: int, _frame: Any) -> None:
        state["signals"] += 1
        if state["signals"] > 1:
            os._exit(128 + signum)
        timer = threading.Timer(grace_s, os._exit, (128 + signum,))
        timer.daemon = True
        timer.start()
        with contextlib.suppress(RuntimeError):  # the loop closed already
            loop.call_soon_threadsafe(stop.set)

    return handler


async def serve(settings: Settings) -> None:
    cluster = await start_cluster(settings)
    stop = asyncio.Event()
    handler = on_stop_signal(asyncio.get_running_loop(), stop)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await cluster.stop()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (a dependency wherever it builds: not on
    Windows nor PyPy), else asyncio's own.

    uvloop takes 6 to 13% off the proxy's CPU per request (docs/performance.md).
    ``CLUSTERODM_LOOP=asyncio`` keeps asyncio's loop even when uvloop is there.
    """
    if os.environ.get("CLUSTERODM_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


SITE_FLAGS = {"proxy": "--port", "secure": "--secure-port", "admin-web": "--admin-web-port"}


def _reason(e: OSError) -> str:
    if e.errno == errno.EADDRINUSE:
        return "address already in use"
    return e.strerror or str(e) or type(e).__name__


def _writable_dir(path: Path) -> None:
    """``--data-dir`` exists (made if needed) and takes new files; else StartupError."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StartupError(f"--data-dir {path}: exists and is not a folder") from None
    except OSError as e:
        raise StartupError(f"--data-dir {path}: cannot create it: {_reason(e)}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise StartupError(f"--data-dir {path}: cannot write in it: {_reason(e)}") from None


def run(settings: Settings) -> None:
    logsetup.setup(settings.log_level, settings.log_format)
    try:
        with Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(settings))
    except StartupError as e:
        print(f"clusterodm: {e.message}", file=sys.stderr)
        raise SystemExit(1) from None
