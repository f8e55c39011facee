"""Kill the proxy with SIGKILL at random moments of a task's life and check what nodes hold.

Shared by the bounded fault tests (``tests/e2e/test_faults_crash.py``) and the longer
randomised run (``python -m bench --only faults``). One *round* is one task: a client inits,
uploads images one request at a time, commits and polls until the task completes, while a
killer stops the proxy (``python -m clusterodm``, a real process) once, at a moment drawn from a
seeded generator: either a random time into the round, or just after a chosen client step got
its answer (plus a few milliseconds). The proxy is started again on the same port and data
folder at once; the client goes on as a client would (a request that failed is sent again).

Then the invariant is checked on every node, from the node's own folders: the one node that
runs the task holds exactly the images the client uploaded (same names, same sha256, same
count) and no staged leftovers; every other node holds nothing under the uuid. The one
ambiguity a client has too: an upload request cut off by the kill may have been staged before
the proxy died, and sent again it is kept twice (``a_.jpg``), as NodeODM itself keeps it; such
a copy of that one image, same bytes, is allowed and counted apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import FormData

from tests.proxyproc import ProxyProcess
from tests.redis_server import free_port

ROUND_TIMEOUT_S = 90.0
RETRY_PAUSE_S = 0.05


class HeldNode(Protocol):
    """A node whose folders can be read: the simulated node or the real NodeODM."""

    host: str
    port: int


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def images_dir(node: Any, uuid: str) -> Path:
    """Where ``node`` keeps a committed task's images."""
    if getattr(node, "kind", "") == "real":
        return Path(node.task_dir(uuid)) / "images"
    return Path(node.temp_dir) / "data" / uuid / "images"


def staged_dir(node: Any, uuid: str) -> Path:
    """Where ``node`` keeps an upload not yet committed (NodeODM's ``tmp/<uuid>``)."""
    root = Path(node.work) if getattr(node, "kind", "") == "real" else Path(node.temp_dir)
    return root / "tmp" / uuid


def held(node: Any, uuid: str) -> dict[str, str] | None:
    """name -> sha256 of the images ``node`` holds for a task; None if it has no task folder."""
    d = images_dir(node, uuid)
    if not d.is_dir():
        return None
    return {p.name: _digest(p) for p in sorted(d.iterdir()) if p.is_file()}


@dataclass
class Tally:
    """What the rounds tried and found."""

    kills: int = 0
    tasks: int = 0
    images: int = 0
    mismatches: int = 0
    retried_copies: int = 0  # allowed second copies of an image whose request the kill cut
    info_worst_s: float = 0.0  # slowest /info right after a restart
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"kills tried: {self.kills}, tasks checked: {self.tasks}, images compared: "
            f"{self.images}, mismatches: {self.mismatches}"
        )


class Proxy(ProxyProcess):
    """A cluster process on a fixed port, so a client finds it again after a kill and restart."""

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, *args, port=free_port(), env=env)


class Client:
    """A client that goes on after the proxy died: a failed request is sent again."""

    def __init__(self, session: aiohttp.ClientSession, proxy: Proxy, deadline: float) -> None:
        self.s = session
        self.proxy = proxy
        self.deadline = deadline
        self.marks: list[Callable[[int], None]] = []
        self.step = 0

    def mark(self) -> None:
        """A step got its answer (the killer may be waiting for this one)."""
        self.step += 1
        for hook in self.marks:
            hook(self.step)

    async def json(self, method: str, path: str, cut: list[bool] | None = None, **kw: Any) -> Any:
        """The answer's JSON, sending again until the proxy answers; ``cut`` gets True when a
        request may have reached the proxy before it died."""
        while True:
            if time.monotonic() > self.deadline:
                raise AssertionError(f"{method} {path}: no answer before the round's deadline")
            form = kw.get("form")
            data = form() if callable(form) else None
            try:
                async with self.s.request(
                    method,
                    self.proxy.url + path,
                    data=data,
                    timeout=aiohttp.ClientTimeout(total=20),
                ) as r:
                    body = await r.json(content_type=None)
                return body
            except aiohttp.ClientConnectorError:
                pass  # not sent: the proxy is down
            except (aiohttp.ClientError, TimeoutError, asyncio.TimeoutError, ValueError):
                if cut is not None:
                    cut.append(True)
            await asyncio.sleep(RETRY_PAUSE_S)


def _image_form(name: str, data: bytes) -> Callable[[], FormData]:
    def make() -> FormData:
        form = FormData()
        form.add_field("images", data, filename=name, content_type="image/jpeg")
        return form

    return make


async def one_task(client: Client, images: list[tuple[str, bytes]]) -> tuple[str, set[str]]:
    """Init, upload one image per request, commit, until the task completes. Returns the uuid
    and the names whose upload request was cut by a kill."""

    def init_form() -> FormData:
        return FormData({"name": "fault round"})

    uuid = ""
    while not uuid:
        answer = await client.json("POST", "/task/new/init", form=init_form)
        uuid = str(answer.get("uuid", "")) if isinstance(answer, dict) else ""
    client.mark()
    cut_names: set[str] = set()
    for name, data in images:
        while True:
            cut: list[bool] = []
            answer = await client.json(
                "POST", f"/task/new/upload/{uuid}", cut=cut, form=_image_form(name, data)
            )
            if cut:
                cut_names.add(name)
            if answer == {"success": True}:
                break
            raise AssertionError(f"upload of {name} refused: {answer}")
        client.mark()
    while True:
        answer = await client.json("POST", f"/task/new/commit/{uuid}")
        if answer == {"uuid": uuid}:
            break
        info = await client.json("GET", f"/task/{uuid}/info")
        if isinstance(info, dict) and info.get("uuid") == uuid:
            break  # committed before the kill: the answer was lost
        raise AssertionError(f"commit refused: {answer}")
    client.mark()
    while True:
        info = await client.json("GET", f"/task/{uuid}/info")
        code = info.get("status", {}).get("code") if isinstance(info, dict) else None
        if code == 40:
            break
        if code in (30, 50):
            raise AssertionError(f"task ended with status {code}: {info}")
        await asyncio.sleep(0.1)
    client.mark()
    return uuid, cut_names


def check(
    nodes: list[Any], uuid: str, images: list[tuple[str, bytes]], cut: set[str], tally: Tally
) -> None:
    """The invariant on every node (module doc); failures are counted and described."""
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in images}
    runs = [(n, h) for n in nodes if (h := held(n, uuid)) is not None]
    problems: list[str] = []
    if len(runs) != 1:
        problems.append(f"{len(runs)} nodes hold task folders")
    for node, names in runs[:1]:
        for name, digest in expected.items():
            if names.get(name) != digest:
                problems.append(f"{name} missing or changed on {node.port}")
        for name, digest in names.items():
            if name in expected:
                continue
            stem, dot, ext = name.rpartition(".")
            original = f"{stem.rstrip('_')}{dot}{ext}"
            if original in cut and expected.get(original) == digest:
                tally.retried_copies += 1
            else:
                problems.append(f"extra {name} on {node.port}")
    for node in nodes:
        staged = staged_dir(node, uuid)
        if staged.exists():
            problems.append(f"staged leftovers on {node.port}: {sorted(os.listdir(staged))}")
    tally.tasks += 1
    tally.images += len(expected)
    if problems:
        tally.mismatches += 1
        tally.problems.append(f"{uuid}: " + "; ".join(problems))


def make_images(rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    return [(f"img{i:02d}.jpg", rng.randbytes(rng.randint(1024, 48 * 1024))) for i in range(count)]


async def run_round(
    proxy: Proxy,
    nodes: list[Any],
    rng: random.Random,
    tally: Tally,
    span_s: float,
    images: int = 6,
    kill: bool = True,
) -> float:
    """One task with one kill (module doc; none if not ``kill``); returns how long the client
    needed."""
    imgs = make_images(rng, images)
    steps = images + 3  # init, uploads, commit, completion
    started = time.monotonic()
    async with aiohttp.ClientSession() as s:
        client = Client(s, proxy, started + ROUND_TIMEOUT_S)
        killed = asyncio.Event()

        async def kill_and_restart() -> None:
            if killed.is_set():
                return
            killed.set()
            tally.kills += 1
            await proxy.kill()
            await proxy.start()
            started = time.monotonic()
            async with s.get(f"{proxy.url}/info", timeout=aiohttp.ClientTimeout(total=10)) as r:
                await r.read()
            tally.info_worst_s = max(tally.info_worst_s, time.monotonic() - started)

        jobs: set[asyncio.Task[None]] = set()
        if not kill:
            pass
        elif rng.random() < 0.5:
            at = rng.randrange(1, steps)
            jitter = rng.uniform(0.0, 0.03)

            def after_step(step: int) -> None:
                if step == at:
                    jobs.add(asyncio.ensure_future(_later(jitter, kill_and_restart)))

            client.marks.append(after_step)
        else:
            jobs.add(asyncio.ensure_future(_later(rng.uniform(0.0, span_s), kill_and_restart)))
        try:
            uuid, cut = await one_task(client, imgs)
        finally:
            for job in jobs:
                with contextlib.suppress(Exception):
                    await job
        elapsed = time.monotonic() - started
        check(nodes, uuid, imgs, cut, tally)
        with contextlib.suppress(Exception):
            await client.json("POST", "/task/remove", form=lambda: FormData({"uuid": uuid}))
    return elapsed


async def _later(delay: float, action: Callable[[], Any]) -> None:
    await asyncio.sleep(delay)
    await action()


async def run_rounds(
    proxy: Proxy, nodes: list[Any], seed: int, rounds: int, images: int = 6
) -> Tally:
    """A clean round to learn how long one takes, then ``rounds`` rounds with a kill each."""
    rng = random.Random(seed)
    tally = Tally()
    span = await run_round(proxy, nodes, rng, tally, span_s=0, images=images, kill=False)
    for _ in range(rounds):
        await run_round(proxy, nodes, rng, tally, span_s=span * 1.2, images=images)
    return tally
