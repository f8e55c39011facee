"""Fair order for tasks waiting at the proxy. Pure: no I/O, no clock.

Round-robin across owners: every owner's first waiting task comes before anyone's second, and
among equals the one that has waited longest goes first. One user's fifty tasks therefore never
starve another user's one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Waiting:
    uuid: str
    owner: str
    images: int
    seq: int  # arrival order in the queue


def fair_order(waiting: Iterable[Waiting]) -> list[Waiting]:
    by_arrival = sorted(waiting, key=lambda w: w.seq)
    rank: dict[str, int] = {}
    keyed: list[tuple[int, int, Waiting]] = []
    for w in by_arrival:
        k = rank.get(w.owner, 0)
        rank[w.owner] = k + 1
        keyed.append((k, w.seq, w))
    return [w for _, _, w in sorted(keyed, key=lambda t: (t[0], t[1]))]


def position(order: Sequence[Waiting], uuid: str) -> int:
    """1-based place of ``uuid`` in ``order`` (0 if absent)."""
    for i, w in enumerate(order, 1):
        if w.uuid == uuid:
            return i
    return 0
