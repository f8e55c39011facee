"""ODM's split-merge as a client of a cluster (``--sm-cluster URL``), for tests and the bench.

Written from how ODM's remote executor (``opendm/remote.py``, ``LocalRemoteExecutor``) behaves,
with pyodm as ODM uses it. Per phase (``reconstruction``, then ``toolchain``), the submodels
go into one queue that two workers take from:

- a local worker processes one submodel at a time on this machine (simulated: it takes
  ``local_s`` seconds; with ``local_s=None`` there is no local worker and every submodel goes
  to the cluster, which is what a slow local machine amounts to);
- a remote worker sends one submodel at a time: a task with its images, ``geo.txt`` or
  ``gcp_list.txt`` and a ``seed.zip`` of its OpenSfM files, ``skipPostProcessing``, the
  phase's ``outputs`` and typed options. Right after the commit it asks ``info()``: QUEUED there
  means "node task limit reached": the task is removed, the submodel goes back into the queue,
  and from then on at most ``max(1, tasks seen running)`` remote tasks run at once. RUNNING
  starts a watcher that polls ``info(with_output=-3)`` until COMPLETED (RUNNING turning into
  QUEUED is the same limit), downloads ``all.zip``, then removes the task.

Callbacks let a test look at the node side at the right moments: ``on_queued`` when the
cluster answers QUEUED, ``before_remove`` with the downloaded ``all.zip`` before the task is
removed (the node still holds its images and seed then).
"""

from __future__ import annotations

import io
import os
import queue
import random
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pyodm import Node, exceptions
from pyodm.types import TaskStatus

#: per phase: files of the submodel that go into seed.zip, empty files added to it, outputs
PHASES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "reconstruction": (
        ["opensfm/exif", "opensfm/camera_models.json", "opensfm/reference_lla.json"],
        ["opensfm/split_merge_stop_at_reconstruction.txt"],
        [
            "opensfm/matches",
            "opensfm/features",
            "opensfm/reconstruction.json",
            "opensfm/tracks.csv",
            "cameras.json",
        ],
    ),
    "toolchain": (
        [
            "opensfm/camera_models.json",
            "opensfm/reference_lla.json",
            "opensfm/reconstruction.json",
            "opensfm/tracks.csv",
        ],
        ["opensfm/features/empty", "opensfm/matches/empty", "opensfm/exif/empty"],
        [
            "odm_orthophoto/odm_orthophoto.tif",
            "odm_orthophoto/cutline.gpkg",
            "odm_dem",
            "odm_report",
            "odm_georeferencing",
        ],
    ),
}

#: a submodel's ODM arguments as split-merge passes them: typed values, no split options
OPTIONS: dict[str, object] = {
    "orthophoto-resolution": 5.0,
    "dem-resolution": 5.0,
    "fast-orthophoto": True,
    "min-num-features": 8000,
    "feature-quality": "medium",
}

LIMIT_WAIT_S = 2.0  # ODM's remote worker, at its task limit, looks again after this long


class NodeTaskLimitReached(Exception):
    """ODM's name for a QUEUED answer from the cluster."""


@dataclass
class Submodel:
    """One submodel folder, as split-merge lays it out."""

    name: str
    root: Path

    def images(self) -> list[Path]:
        return sorted((self.root / "images").iterdir())

    def extras(self) -> list[Path]:
        """``geo.txt`` / ``gcp_list.txt``: sent beside the images; the node keeps them apart."""
        return [p for p in (self.root / "gcp_list.txt", self.root / "geo.txt") if p.exists()]

    def seed(self, phase: str) -> bytes:
        """seed.zip for ``phase``: its files relative to the submodel, and the empty markers."""
        paths, touch, _ = PHASES[phase]
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for rel in paths:
                p = self.root / rel
                files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
                for f in files:
                    if f.exists():
                        zf.write(f, f.relative_to(self.root).as_posix())
            for rel in touch:
                zf.writestr(rel, "")
        return out.getvalue()

    def seed_contents(self, phase: str) -> dict[str, bytes]:
        with zipfile.ZipFile(io.BytesIO(self.seed(phase))) as zf:
            return {n: zf.read(n) for n in zf.namelist()}


def make_submodels(
    root: Path, count: int = 3, images: int = 4, image_bytes: int = 50_000, seed: int = 20
) -> list[Submodel]:
    """``count`` submodels of random images, half with ``gcp_list.txt``, half ``geo.txt``."""
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        sub = Submodel(f"submodel_{i:04d}", root / f"submodel_{i:04d}")
        (sub.root / "images").mkdir(parents=True, exist_ok=True)
        (sub.root / "opensfm" / "exif").mkdir(parents=True, exist_ok=True)
        names = [f"DJI_{i:02d}{j:02d}.JPG" for j in range(images)]
        for name in names:
            (sub.root / "images" / name).write_bytes(rnd.randbytes(image_bytes))
            (sub.root / "opensfm" / "exif" / f"{name}.exif").write_text(f'{{"image": "{name}"}}')
        (sub.root / "opensfm" / "camera_models.json").write_text('{"cam": {"focal": 0.8}}')
        (sub.root / "opensfm" / "reference_lla.json").write_text('{"latitude": 46.8}')
        (sub.root / "opensfm" / "reconstruction.json").write_bytes(rnd.randbytes(4000))
        (sub.root / "opensfm" / "tracks.csv").write_text(f"OPENSFM_TRACKS_VERSION_v1\n{i}\n")
        if i % 2 == 0:
            lines = [f"{names[j]} {j}.0 {j}.5 100.0" for j in range(len(names))]
            (sub.root / "gcp_list.txt").write_text("EPSG:4326\n" + "\n".join(lines) + "\n")
        else:
            lines = [f"{names[j]} 9.1{j} 46.8{j} 400" for j in range(len(names))]
            (sub.root / "geo.txt").write_text("EPSG:4326\n" + "\n".join(lines) + "\n")
        out.append(sub)
    return out


@dataclass
class RemoteRun:
    """One remote attempt at a submodel."""

    submodel: str
    uuid: str
    after_commit: str  # status name right after the commit
    statuses: list[str] = field(default_factory=list)  # seen while watching
    limit_hit: bool = False
    all_zip: int = 0  # bytes downloaded


@dataclass
class PhaseReport:
    phase: str
    seconds: float
    runs: list[RemoteRun]
    local: list[str]
    max_remote_tasks: int | None
    error: str | None = None

    @property
    def limit_hits(self) -> int:
        return sum(1 for r in self.runs if r.limit_hit)


@dataclass
class _Shared:
    """What the workers of one phase share (under the phase's lock where it matters)."""

    local_busy: bool = False
    remote: int = 0  # remote tasks uploading or running
    max_remote: int | None = None  # the limit estimated after a QUEUED answer
    error: str | None = None


class SplitMerge:
    """Runs phases against a cluster at ``host:port`` the way ODM's split-merge does."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str = "",
        *,
        poll_s: float = 3.0,
        local_s: float | None = None,
        on_queued: Callable[[str, str], None] | None = None,
        before_remove: Callable[[str, str, bytes], None] | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        self.node = Node(host, port, token)
        self.poll_s = poll_s
        self.local_s = local_s
        self.on_queued = on_queued
        self.before_remove = before_remove
        self.timeout_s = timeout_s

    def run_phase(self, submodels: list[Submodel], phase: str, work: Path) -> PhaseReport:
        """Process every submodel once; raises on a failed task, bounded by ``timeout_s``."""
        started = time.monotonic()
        q: queue.Queue[Submodel | None] = queue.Queue()
        for sub in submodels:
            q.put(sub)
        runs: list[RemoteRun] = []
        local: list[str] = []
        lock = threading.Lock()
        done = threading.Semaphore(0)
        stop = threading.Event()
        state = _Shared()
        watchers: list[threading.Thread] = []

        def fail(e: BaseException) -> None:
            with lock:
                state.error = state.error or f"{type(e).__name__}: {e}"
            stop.set()

        def local_worker() -> None:
            while not stop.is_set():
                sub = q.get()
                if sub is None:
                    return
                state.local_busy = True
                assert self.local_s is not None
                stop.wait(self.local_s)  # the submodel's processing on this machine
                state.local_busy = False
                with lock:
                    local.append(sub.name)
                done.release()

        def limit_reached(run: RemoteRun, task: object) -> None:
            """ODM's handling: estimate the limit once, remove the task, queue the submodel."""
            run.limit_hit = True
            with lock:
                if state.max_remote is None:
                    running = 0
                    for r in runs:
                        if r is run or r.statuses[-1:] == ["COMPLETED"]:
                            continue
                        try:
                            info = self.node.get_task(r.uuid).info(with_output=-3)
                        except exceptions.OdmError:
                            continue
                        if info.status == TaskStatus.RUNNING and info.processing_time >= 0:
                            running += 1
                    state.max_remote = max(1, running)
            _remove(task)

        def watch(run: RemoteRun, sub: Submodel, task: object) -> None:
            try:
                deadline = time.monotonic() + self.timeout_s
                while not stop.is_set():
                    info = task.info(with_output=-3)  # type: ignore[attr-defined]
                    run.statuses.append(info.status.name)
                    if info.status == TaskStatus.QUEUED:  # RUNNING turned into QUEUED
                        if self.on_queued is not None:
                            self.on_queued(sub.name, run.uuid)
                        limit_reached(run, task)
                        q.put(sub)
                        return
                    if info.status == TaskStatus.COMPLETED:
                        break
                    if info.status in (TaskStatus.FAILED, TaskStatus.CANCELED):
                        raise RuntimeError(f"{sub.name} ({run.uuid}) {info.status.name}")
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{sub.name} ({run.uuid}) not done")
                    stop.wait(self.poll_s)
                else:
                    return
                dest = work / phase / sub.name
                dest.mkdir(parents=True, exist_ok=True)
                path = task.download_zip(str(dest))  # type: ignore[attr-defined]
                data = Path(path).read_bytes()
                run.all_zip = len(data)
                with zipfile.ZipFile(io.BytesIO(data)) as zf:
                    zf.extractall(dest)  # as ODM does with its assets
                if self.before_remove is not None:
                    self.before_remove(sub.name, run.uuid, data)
                _remove(task)
                done.release()
            except BaseException as e:
                fail(e)
            finally:
                with lock:
                    state.remote -= 1

        def send(sub: Submodel) -> None:
            """One remote attempt; returns once the upload is done and the watcher started."""
            seed = work / f"{sub.name}-{phase}-seed.zip"
            seed.parent.mkdir(parents=True, exist_ok=True)
            seed_dir = seed.with_suffix("")
            seed_dir.mkdir(exist_ok=True)
            seed_file = seed_dir / "seed.zip"
            seed_file.write_bytes(sub.seed(phase))
            files = [str(p) for p in sub.images()] + [str(p) for p in sub.extras()]
            files.append(str(seed_file))
            task = self.node.create_task(
                files, OPTIONS, skip_post_processing=True, outputs=PHASES[phase][2]
            )
            os.remove(seed_file)
            info = task.info()
            run = RemoteRun(sub.name, task.uuid, info.status.name)
            with lock:
                runs.append(run)
            if info.status == TaskStatus.QUEUED:
                if self.on_queued is not None:
                    self.on_queued(sub.name, task.uuid)
                limit_reached(run, task)
                raise NodeTaskLimitReached(sub.name)
            if info.status not in (TaskStatus.RUNNING, TaskStatus.COMPLETED):
                raise RuntimeError(f"{sub.name}: task status is {info.status.name}")
            t = threading.Thread(target=watch, args=(run, sub, task), daemon=True)
            watchers.append(t)
            t.start()

        def remote_worker() -> None:
            while not stop.is_set():
                try:
                    sub = q.get(timeout=0.05)
                except queue.Empty:
                    continue
                if sub is None:
                    return
                if self.local_s is not None and not state.local_busy:
                    q.put(sub)  # ODM: the remote worker yields to local processing
                    stop.wait(0.05)
                    continue
                limit = state.max_remote
                if limit is not None and state.remote >= limit:
                    q.put(sub)
                    stop.wait(LIMIT_WAIT_S)
                    continue
                with lock:
                    state.remote += 1
                try:
                    send(sub)
                except NodeTaskLimitReached:
                    with lock:
                        state.remote -= 1
                    q.put(sub)
                except BaseException as e:
                    fail(e)
                    return

        threads = [threading.Thread(target=remote_worker, daemon=True)]
        if self.local_s is not None:
            threads.append(threading.Thread(target=local_worker, daemon=True))
        for t in threads:
            t.start()
        deadline = time.monotonic() + self.timeout_s
        finished = 0
        while finished < len(submodels) and not stop.is_set():
            if done.acquire(timeout=0.05):
                finished += 1
            elif time.monotonic() > deadline:
                fail(TimeoutError(f"phase {phase} not done in {self.timeout_s} s"))
        seconds = time.monotonic() - started
        stop.set()
        for _ in threads:
            q.put(None)
        for t in threads + watchers:
            t.join(timeout=30)
        return PhaseReport(phase, seconds, runs, local, state.max_remote, state.error)


def _remove(task: object) -> None:
    try:
        task.remove()  # type: ignore[attr-defined]
    except exceptions.OdmError:
        pass
