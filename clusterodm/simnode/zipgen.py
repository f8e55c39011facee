"""The ``all.zip`` of a finished task, built as a byte layout instead of a file.

A stored (uncompressed) zip is headers plus member bytes, so the whole archive can be described
by a few segments: literal bytes (headers, small text files) and runs of a fixed pseudo-random
1 MiB block (the "rasters" and "point clouds"). Any byte range is then produced on demand, so a
2 GB ``all.zip`` costs no disk and a few KB of memory, downloads are identical every time, and
``Range`` requests can start anywhere. Only the CRC-32 of each block run needs a pass over the
data; it is computed once per size and cached (call :func:`build_zip` off the event loop).
Archives stay below 4 GiB (no zip64). Imports nothing from the rest of the package.
"""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache, lru_cache

BLOCK_SIZE = 1 << 20
#: Largest archive we can describe without zip64 records.
MAX_ZIP_SIZE = 0xFFFFFFFF
_STORED_VERSION = 20
_MADE_BY = (3 << 8) | _STORED_VERSION  # unix, so the file mode below is honoured
_FILE_MODE = 0o100644 << 16
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_END = struct.Struct("<IHHHHIIH")


@cache
def pattern_block() -> bytes:
    """The deterministic filler block, the same in every process."""
    return random.Random(0x0D7A5E7).randbytes(BLOCK_SIZE)


@lru_cache(maxsize=64)
def pattern_crc(size: int) -> int:
    """CRC-32 of ``size`` filler bytes (the block repeated), cached because it costs ~1 s/GB."""
    block = pattern_block()
    crc = 0
    full, rest = divmod(size, BLOCK_SIZE)
    for _ in range(full):
        crc = zlib.crc32(block, crc)
    return zlib.crc32(block[:rest], crc)


@dataclass(frozen=True, slots=True)
class Member:
    """One archive entry: literal ``data``, or ``size`` filler bytes when ``data`` is None."""

    name: str
    data: bytes | None = None
    size: int = 0

    @property
    def length(self) -> int:
        return len(self.data) if self.data is not None else self.size


@dataclass(frozen=True, slots=True)
class Segment:
    """``length`` bytes at ``offset``: literal ``data``, or filler starting at filler offset 0."""

    offset: int
    length: int
    data: bytes | None


@dataclass(frozen=True, slots=True)
class ZipImage:
    """A complete archive as segments; ``size`` is its exact byte length."""

    segments: tuple[Segment, ...]
    size: int

    def iter_range(
        self, start: int, stop: int, chunk_size: int = 256 * 1024
    ) -> Iterator[bytes | memoryview]:
        """Yield the archive's bytes ``[start, stop)`` in chunks of at most ``chunk_size``."""
        view = memoryview(pattern_block())
        for segment in self.segments:
            lo = max(start, segment.offset)
            hi = min(stop, segment.offset + segment.length)
            if lo >= hi:
                continue
            if segment.data is not None:
                literal = memoryview(segment.data)
                for pos in range(lo - segment.offset, hi - segment.offset, chunk_size):
                    yield literal[pos : min(pos + chunk_size, hi - segment.offset)]
                continue
            pos, end = lo - segment.offset, hi - segment.offset
            while pos < end:
                at = pos % BLOCK_SIZE
                count = min(end - pos, BLOCK_SIZE - at, chunk_size)
                yield view[at : at + count]
                pos += count

    def read_all(self) -> bytes:
        """The whole archive in memory: for tests and small archives only."""
        return b"".join(self.iter_range(0, self.size))


def _dos_time(when: datetime) -> tuple[int, int]:
    year = min(max(when.year, 1980), 2107)
    date = ((year - 1980) << 9) | (when.month << 5) | when.day
    time = (when.hour << 11) | (when.minute << 5) | (when.second // 2)
    return time, date


def overhead(names: Iterable[str]) -> int:
    """Bytes of headers and directory for members of these names (everything but content)."""
    return _END.size + sum(_LOCAL.size + _CENTRAL.size + 2 * len(n.encode()) for n in names)


def build_zip(members: list[Member], when: datetime) -> ZipImage:
    """Lay out a stored zip of ``members``; computes CRCs, so run it off the event loop."""
    dos_time, dos_date = _dos_time(when)
    segments: list[Segment] = []
    central = bytearray()
    offset = 0
    for member in members:
        name = member.name.encode()
        length = member.length
        crc = zlib.crc32(member.data) if member.data is not None else pattern_crc(length)
        fields = (0, 0, dos_time, dos_date, crc, length, length, len(name))
        header = _LOCAL.pack(0x04034B50, _STORED_VERSION, *fields, 0) + name
        central += _CENTRAL.pack(
            0x02014B50, _MADE_BY, _STORED_VERSION, *fields, 0, 0, 0, 0, _FILE_MODE, offset
        )
        central += name
        if member.data is not None:
            segments.append(Segment(offset, len(header) + length, header + member.data))
        else:
            segments.append(Segment(offset, len(header), header))
            segments.append(Segment(offset + len(header), length, None))
        offset += len(header) + length
    count = len(members)
    central += _END.pack(0x06054B50, 0, 0, count, count, len(central), offset, 0)
    segments.append(Segment(offset, len(central), bytes(central)))
    size = offset + len(central)
    if size > MAX_ZIP_SIZE:
        raise ValueError(f"all.zip of {size} bytes needs zip64, which is not supported")
    return ZipImage(tuple(s for s in segments if s.length), size)
