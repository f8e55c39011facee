"""Staging: uploads kept on disk in ``<root>/<uuid>/`` until a task is dispatched to a node.

Owns the folder layout, file-name sanitising, atomic write-then-link saves and the stale-upload
sweep. The upload's metadata (fields, owner, times) lives in the Store, not here. Imports only
``model``, ``errors`` and the standard library.

A save streams into ``.part-<random>`` in the task's folder and then hard-links the finished file
under its final name: ``os.link`` fails if the name exists, so two concurrent saves of one name
end up as two files. Original (like NodeODM): writes straight to the final name, so concurrent
same-name uploads overwrite each other and a killed upload leaves a truncated image behind.
Here a killed upload leaves only a ``.part-*`` file, which ``files()`` ignores and ``sweep``
removes.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import secrets
import shutil
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from clusterodm.errors import InvalidRequest, LimitExceeded
from clusterodm.model import ANY_UUID_RE

log = logging.getLogger(__name__)

PART_PREFIX = ".part-"
"""Temporary files being written; never listed as staged files."""

RENAMED_BODY = "_body.json"
"""Original: ``body.json`` holds the init fields in the same folder, so an image of that name is
renamed. Here the fields live in the store, but the rename is kept so files match the original."""

MAX_NAME_BYTES = 255
"""NAME_MAX on common file systems."""

WRITE_BUFFER_BYTES = 1024 * 1024
"""Chunks are gathered up to this size before one off-loop write: few thread hops, bounded RAM."""

STRAY_PART_AGE_S = 3600.0
"""A ``.part-*`` file untouched this long belongs to a dead upload (writes refresh its mtime)."""

MAX_NAME_ATTEMPTS = 1000
"""Bound on the ``_`` clash suffixes tried for one name."""


def sanitize(filename: str) -> str:
    """A safe file name inside the task folder, following the original's rules.

    ``/`` and ``\\`` become ``_`` so no name can leave the folder; ``body.json`` is renamed;
    control characters become ``_``; empty, ``.`` and ``..`` become underscores; the reserved
    ``.part-`` prefix is escaped; the result is capped at 255 UTF-8 bytes, keeping the extension.
    """
    name = "".join("_" if _is_unsafe(ch) else ch for ch in filename)
    if name.strip(".") == "":
        name = "_" * max(1, len(name))
    if name.lower() == "body.json":
        name = RENAMED_BODY
    if name.startswith(PART_PREFIX):
        name = "_" + name
    return _cap_bytes(name, MAX_NAME_BYTES)


def _is_unsafe(ch: str) -> bool:
    return ch in "/\\" or unicodedata.category(ch) == "Cc"


def _cap_bytes(name: str, limit: int) -> str:
    """Trim the stem (never the extension, unless it alone is too long) to ``limit`` bytes."""
    if len(name.encode()) <= limit:
        return name
    stem, ext = os.path.splitext(name)
    if len(ext.encode()) >= limit // 2:
        stem, ext = name, ""
    room = limit - len(ext.encode())
    return stem.encode()[:room].decode(errors="ignore") + ext


def free_name(filename: str, taken: Callable[[str], bool]) -> str:
    """The name ``save`` would give ``filename`` now: sanitised, then the first clash candidate
    that ``taken`` refuses. Lets a name be chosen before the file's bytes arrive (an upload
    relayed to a node carries it in the part's headers)."""
    name = sanitize(filename)
    for candidate in _candidates(name):
        if not taken(candidate):
            return candidate
    raise InvalidRequest(f"too many files named like {name[:80]}")


def _candidates(name: str) -> Iterator[str]:
    """``a.jpg``, ``a_.jpg``, ``a__.jpg``...: the original's clash rule, kept within NAME_MAX."""
    yield name
    stem, ext = os.path.splitext(name)
    for n in range(1, MAX_NAME_ATTEMPTS):
        suffix = "_" * n + ext
        room = MAX_NAME_BYTES - len(suffix.encode())
        if room <= 0:
            return
        yield stem.encode()[:room].decode(errors="ignore") + suffix


class Staging:
    """Staged uploads under ``root``, one folder per task uuid."""

    def __init__(self, root: Path, fsync: bool = False) -> None:
        """``fsync``: flush each file, then its folder, to disk (off-loop). Off by default: a
        process crash loses nothing written; only power loss could, and a client re-uploads."""
        self.root = root
        self.fsync = fsync

    sanitize = staticmethod(sanitize)

    # --- folders ---

    def path(self, uuid: str) -> Path:
        """The task's folder. A uuid that could name another path is refused."""
        if not ANY_UUID_RE.match(uuid):
            raise InvalidRequest(f"invalid uuid: {uuid[:80]!r}")
        return self.root / uuid

    async def create(self, uuid: str) -> None:
        folder = self.path(uuid)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)

    def exists(self, uuid: str) -> bool:
        return self.path(uuid).is_dir()

    def uuids(self) -> list[str]:
        """Task folders present, sorted."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))

    async def remove(self, uuid: str) -> None:
        """Delete the folder and everything in it; a missing folder is fine."""
        await asyncio.to_thread(_rmtree, self.path(uuid))

    # --- files ---

    def files(self, uuid: str) -> list[Path]:
        """Finished files, sorted by name; ``.part-*`` files in progress are not listed."""
        folder = self.path(uuid)
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return []
        names = sorted(
            e.name for e in entries if e.is_file() and not e.name.startswith(PART_PREFIX)
        )
        return [folder / name for name in names]

    def count(self, uuid: str) -> int:
        return len(self.files(uuid))

    async def save(
        self,
        uuid: str,
        filename: str,
        chunks: AsyncIterator[bytes],
        max_bytes: int | None = None,
    ) -> str:
        """Stream ``chunks`` into the task folder under a sanitised, unused name; return it.

        The folder is created if needed. Raises ``LimitExceeded`` (and keeps nothing) once more
        than ``max_bytes`` arrive. On any failure or cancellation the part file is deleted.
        Chunks are gathered (not joined) up to ``WRITE_BUFFER_BYTES`` per off-loop write, and
        the last write, close and link share one hand-off: an image of a few MB costs the
        event loop one or two thread hops.
        """
        writer = _PartWriter(self.path(uuid), self.fsync)
        name = sanitize(filename)
        pending: list[bytes] = []
        size = total = 0
        try:
            async for chunk in chunks:
                total += len(chunk)
                if max_bytes is not None and total > max_bytes:
                    raise LimitExceeded(f"{filename[:80]} is larger than {max_bytes} bytes")
                pending.append(chunk)
                size += len(chunk)
                if size >= WRITE_BUFFER_BYTES:
                    await asyncio.to_thread(writer.write, pending)
                    pending, size = [], 0
            return await asyncio.to_thread(writer.finish, pending, name)
        finally:
            if not writer.finished:
                await asyncio.to_thread(writer.discard)

    # --- stale uploads ---

    async def sweep(
        self, now_s: float, max_age_s: float, idle_s: float | None, committed: set[str]
    ) -> list[str]:
        """Delete stale task folders and dead part files; return the uuids removed.

        Original rule: a folder untouched for ``max_age_s`` goes always; with ``idle_s``
        (``--stale-uploads-timeout``), an uncommitted folder with nothing new for ``idle_s`` too.
        "Touched" is the newest mtime of the folder and anything in it, part files included, so
        an upload still being written keeps its folder.
        """
        return await asyncio.to_thread(self._sweep, now_s, max_age_s, idle_s, frozenset(committed))

    def _sweep(
        self, now_s: float, max_age_s: float, idle_s: float | None, committed: frozenset[str]
    ) -> list[str]:
        removed: list[str] = []
        for uuid in self.uuids():
            folder = self.root / uuid
            last_s = _last_activity_s(folder)
            if last_s is None:
                continue
            idle_for_s = now_s - last_s
            stale = idle_for_s >= max_age_s or (
                idle_s is not None and uuid not in committed and idle_for_s >= idle_s
            )
            if stale:
                _rmtree(folder)
                removed.append(uuid)
                log.info("removed stale upload %s (idle %.0f s)", uuid, idle_for_s)
            else:
                _remove_stray_parts(folder, now_s)
        return removed


# --- blocking helpers (run in a worker thread) ------------------------------------------------


class _PartWriter:
    """One file being staged: ``.part-<random>`` in the folder, then linked under its name."""

    def __init__(self, folder: Path, fsync: bool) -> None:
        self.folder = folder
        self.fsync = fsync
        self.part = folder / f"{PART_PREFIX}{secrets.token_hex(8)}"
        self.handle: BinaryIO | None = None
        self.finished = False

    def write(self, chunks: list[bytes]) -> None:
        if self.handle is None:
            try:
                self.handle = self.part.open("xb")
            except FileNotFoundError:  # the folder is made at init; not after a sweep
                self.folder.mkdir(parents=True, exist_ok=True)
                self.handle = self.part.open("xb")
        self.handle.writelines(chunks)

    def finish(self, chunks: list[bytes], name: str) -> str:
        """Write the rest, close, link under the first free name; the part file goes."""
        self.write(chunks)
        assert self.handle is not None
        self.handle.flush()
        if self.fsync:
            os.fsync(self.handle.fileno())
        self.handle.close()
        stored = _link_free_name(self.part, self.folder, name)
        if self.fsync:
            _fsync_dir(self.folder)
        self.part.unlink(missing_ok=True)
        self.finished = True
        return stored

    def discard(self) -> None:
        """Failed or cancelled: close and delete the part file."""
        if self.handle is not None:
            self.handle.close()
        self.part.unlink(missing_ok=True)


def _link_free_name(part: Path, folder: Path, name: str) -> str:
    """Give ``part`` the first free name among the clash candidates, atomically."""
    for candidate in _candidates(name):
        try:
            _link_exclusive(part, folder / candidate)
        except FileExistsError:
            continue
        return candidate
    raise InvalidRequest(f"too many files named like {name[:80]}")


def _link_exclusive(source: Path, target: Path) -> None:
    """Create ``target`` with ``source``'s content; fail with FileExistsError if taken.

    Falls back to reserve-then-replace on file systems without hard links.
    """
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(source, target)


def _fsync_dir(folder: Path) -> None:
    """Make the new directory entry durable too, not only the file's bytes."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rmtree(folder: Path) -> None:
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass


def _last_activity_s(folder: Path) -> float | None:
    """Newest mtime of the folder and its entries; None if it vanished meanwhile."""
    try:
        newest = folder.stat().st_mtime
        for entry in os.scandir(folder):
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    except FileNotFoundError:
        return None
    return newest


def _remove_stray_parts(folder: Path, now_s: float) -> None:
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return
    for entry in entries:
        if not entry.name.startswith(PART_PREFIX):
            continue
        try:
            if now_s - entry.stat(follow_symlinks=False).st_mtime >= STRAY_PART_AGE_S:
                os.unlink(entry.path)
                log.info("removed abandoned partial upload %s", entry.path)
        except FileNotFoundError:
            continue
