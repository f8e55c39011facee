"""Staging: sanitised names, clash naming, atomic concurrent saves, limits, stale sweep."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from clusterodm.errors import InvalidRequest, LimitExceeded
from clusterodm.store.staging import (
    PART_PREFIX,
    STRAY_PART_AGE_S,
    WRITE_BUFFER_BYTES,
    Staging,
    free_name,
    sanitize,
)

UUID = "2f0a6f4e-4c0e-4a8e-9d3c-0c5b2f2a9e11"
OTHER = "7d1f1f8e-1b3a-4c6e-8f00-5b1c2d3e4f50"
HOUR_S = 3600.0
NOW_S = 1_800_000_000.0


@pytest.fixture
def staging(tmp_path: Path) -> Staging:
    return Staging(tmp_path / "tmp")


async def stream(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("a.jpg", "a.jpg"),
        ("../../etc/passwd", ".._.._etc_passwd"),
        ("a\\b.jpg", "a_b.jpg"),
        ("dir/sub/img.JPG", "dir_sub_img.JPG"),
        ("body.json", "_body.json"),
        ("BODY.JSON", "_body.json"),
        ("", "_"),
        (".", "_"),
        ("..", "__"),
        ("a\x00b.jpg", "a_b.jpg"),
        ("line\nbreak\t.jpg", "line_break_.jpg"),
        (".part-abc", "_.part-abc"),
        ("img ü 1.tif", "img ü 1.tif"),
    ],
)
def test_sanitize(given: str, expected: str) -> None:
    assert sanitize(given) == expected
    assert Staging.sanitize(given) == expected


@pytest.mark.parametrize("name", ["x" * 300 + ".jpg", "é" * 200 + ".tif", "y" * 400])
def test_sanitize_caps_at_255_bytes_keeping_extension(name: str) -> None:
    result = sanitize(name)
    assert len(result.encode()) <= 255
    assert result.endswith(os.path.splitext(name)[1])


async def test_save_stays_inside_folder(staging: Staging) -> None:
    stored = await staging.save(UUID, "../../etc/passwd", stream([b"root"]))
    [path] = staging.files(UUID)
    assert path.name == stored
    assert path.parent == staging.path(UUID)
    assert path.read_bytes() == b"root"


async def test_clash_appends_underscore_before_extension(staging: Staging) -> None:
    names = [await staging.save(UUID, "a.jpg", stream([bytes([i])])) for i in range(3)]
    names += [await staging.save(UUID, "a", stream([b"x"])) for _ in range(2)]
    assert names == ["a.jpg", "a_.jpg", "a__.jpg", "a", "a_"]
    assert (staging.path(UUID) / "a_.jpg").read_bytes() == b"\x01"
    assert staging.count(UUID) == 5


async def test_clash_on_a_255_byte_name_stays_valid(staging: Staging) -> None:
    long_name = "z" * 251 + ".jpg"
    first = await staging.save(UUID, long_name, stream([b"1"]))
    second = await staging.save(UUID, long_name, stream([b"2"]))
    assert first != second
    assert len(second.encode()) <= 255 and second.endswith("_.jpg")


async def test_concurrent_same_name_saves_are_distinct_files(staging: Staging) -> None:
    async def upload(i: int) -> str:
        payload = [bytes([i]) * 1000] * 50
        return await staging.save(UUID, "same.jpg", stream(payload))

    async with asyncio.TaskGroup() as group:
        jobs = [group.create_task(upload(i)) for i in range(12)]
    names = [job.result() for job in jobs]
    assert len(set(names)) == 12
    for i, name in enumerate(names):
        assert (staging.path(UUID) / name).read_bytes() == bytes([i]) * 50_000
    assert not list(staging.path(UUID).glob(PART_PREFIX + "*"))


async def test_big_save_is_streamed_in_pieces(staging: Staging) -> None:
    chunk = b"\xab" * 65536
    stored = await staging.save(UUID, "big.tif", stream([chunk] * 40), max_bytes=40 * 65536)
    assert (staging.path(UUID) / stored).stat().st_size == 40 * 65536


async def test_max_bytes_exceeded_keeps_nothing(staging: Staging) -> None:
    with pytest.raises(LimitExceeded):
        await staging.save(UUID, "big.jpg", stream([b"x" * 600, b"x" * 600]), max_bytes=1000)
    assert staging.files(UUID) == []
    folder = staging.path(UUID)
    assert not folder.exists() or list(folder.iterdir()) == []


async def test_failed_stream_removes_part_file(staging: Staging) -> None:
    written: list[str] = []

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * (WRITE_BUFFER_BYTES + 1)  # written to a part file before the failure
        written.extend(p.name for p in staging.path(UUID).iterdir())
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await staging.save(UUID, "a.jpg", broken())
    assert len(written) == 1 and written[0].startswith(PART_PREFIX)
    assert list(staging.path(UUID).iterdir()) == []


async def test_fsync_option_saves_too(tmp_path: Path) -> None:
    staging = Staging(tmp_path / "tmp", fsync=True)
    assert await staging.save(UUID, "a.jpg", stream([b"abc"])) == "a.jpg"
    assert staging.files(UUID)[0].read_bytes() == b"abc"


async def test_part_files_are_ignored_by_files(staging: Staging) -> None:
    await staging.save(UUID, "b.jpg", stream([b"b"]))
    await staging.save(UUID, "a.jpg", stream([b"a"]))
    (staging.path(UUID) / f"{PART_PREFIX}deadbeef").write_bytes(b"half")
    assert [p.name for p in staging.files(UUID)] == ["a.jpg", "b.jpg"]
    assert staging.count(UUID) == 2


async def test_create_exists_uuids_remove(staging: Staging) -> None:
    assert staging.uuids() == []
    assert not staging.exists(UUID)
    await staging.create(UUID)
    await staging.create(UUID)
    await staging.create(OTHER)
    assert staging.exists(UUID)
    assert staging.uuids() == sorted([UUID, OTHER])
    await staging.save(UUID, "a.jpg", stream([b"a"]))
    await staging.remove(UUID)
    await staging.remove(UUID)
    assert not staging.exists(UUID)
    assert staging.files(UUID) == []
    assert staging.uuids() == [OTHER]


@pytest.mark.parametrize("bad", ["..", "../x", "a/b", "", "x" * 65])
def test_path_refuses_non_uuid(staging: Staging, bad: str) -> None:
    with pytest.raises(InvalidRequest):
        staging.path(bad)


async def make_folder(staging: Staging, uuid: str, age_s: float, file_age_s: float | None) -> None:
    """A staged folder last touched ``age_s`` ago, with one file ``file_age_s`` old."""
    await staging.save(uuid, "a.jpg", stream([b"a"]))
    folder = staging.path(uuid)
    if file_age_s is not None:
        stamp = NOW_S - file_age_s
        os.utime(folder / "a.jpg", (stamp, stamp))
    else:
        (folder / "a.jpg").unlink()
    os.utime(folder, (NOW_S - age_s, NOW_S - age_s))


@pytest.mark.parametrize(
    ("age_h", "file_age_h", "idle_h", "committed", "removed"),
    [
        (49, 49, None, False, True),  # untouched 48 h+: always
        (49, 49, None, True, True),  # ...even when committed
        (49, None, None, False, True),  # empty folder
        (49, 1, None, False, False),  # a recent file keeps it
        (10, 10, None, False, False),  # no idle timeout given
        (10, 10, 6, False, True),  # uncommitted, idle past the timeout
        (10, 10, 6, True, False),  # committed: only the 48 h rule
        (10, 2, 6, False, False),  # a new file within the timeout
        (5, 5, 6, False, False),  # not idle long enough
    ],
)
async def test_sweep_rules(
    staging: Staging,
    age_h: float,
    file_age_h: float | None,
    idle_h: float | None,
    committed: bool,
    removed: bool,
) -> None:
    file_age_s = None if file_age_h is None else file_age_h * HOUR_S
    await make_folder(staging, UUID, age_h * HOUR_S, file_age_s)
    await make_folder(staging, OTHER, 0, 0)
    idle_s = None if idle_h is None else idle_h * HOUR_S
    done = await staging.sweep(NOW_S, 48 * HOUR_S, idle_s, {UUID} if committed else set())
    assert done == ([UUID] if removed else [])
    assert staging.exists(UUID) is not removed
    assert staging.exists(OTHER)


async def test_sweep_removes_old_part_files_but_not_fresh_ones(staging: Staging) -> None:
    await make_folder(staging, UUID, 0, 0)
    folder = staging.path(UUID)
    old, fresh = folder / f"{PART_PREFIX}old", folder / f"{PART_PREFIX}fresh"
    old.write_bytes(b"dead upload")
    fresh.write_bytes(b"still arriving")
    stamp = NOW_S - STRAY_PART_AGE_S - 1
    os.utime(old, (stamp, stamp))
    os.utime(fresh, (NOW_S, NOW_S))
    os.utime(folder, (NOW_S, NOW_S))
    assert await staging.sweep(NOW_S, 48 * HOUR_S, None, set()) == []
    assert not old.exists()
    assert fresh.exists()
    assert [p.name for p in staging.files(UUID)] == ["a.jpg"]


async def test_part_file_being_written_keeps_idle_folder(staging: Staging) -> None:
    await make_folder(staging, UUID, 10 * HOUR_S, 10 * HOUR_S)
    part = staging.path(UUID) / f"{PART_PREFIX}live"
    part.write_bytes(b"...")
    os.utime(part, (NOW_S - 60, NOW_S - 60))
    assert await staging.sweep(NOW_S, 48 * HOUR_S, 6 * HOUR_S, set()) == []
    assert staging.exists(UUID)


async def test_sweep_without_root_is_empty(tmp_path: Path) -> None:
    assert await Staging(tmp_path / "none").sweep(NOW_S, 1.0, 1.0, set()) == []


async def test_cancelled_save_leaves_no_file(staging: Staging) -> None:
    started = asyncio.Event()
    never = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield b"x" * 2_000_000
        started.set()
        await never.wait()
        yield b"never"

    job = asyncio.create_task(staging.save(UUID, "a.jpg", stalled()))
    async with asyncio.timeout(10):
        await started.wait()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert list(staging.path(UUID).iterdir()) == []


async def test_free_name_is_the_name_save_gives(staging: Staging) -> None:
    """A relayed file's name is chosen before its bytes arrive: it must be the one ``save``
    would give, clash suffixes and sanitising included, so the node and staging agree."""
    names = ["a.jpg", "a.jpg", "a_.jpg", "a.jpg", "dir/b.jpg", "body.json", "noext", "noext"]
    folder = staging.path(UUID)
    for name in names:
        chosen = free_name(name, lambda n: (folder / n).exists())
        assert await staging.save(UUID, name, stream([b"x"])) == chosen
    taken = {p.name for p in staging.files(UUID)}
    assert free_name("a.jpg", taken.__contains__) == "a____.jpg"
