"""Fair order for tasks waiting at the proxy. Pure: no I/O, no clock.

Start-time fair queuing: each waiting task gets a tag when it joins, one more than the larger
of its owner's previous tag and the tag of the last task sent on. Tasks leave in tag order
(then arrival order). A user's tasks thus take turns with everyone else's: one user's fifty
tasks never starve another user's one, and a user who just got a slot waits behind those who
did not.
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
    tag: float = 0.0  # fair-queuing tag (see FairTags)


class FairTags:
    """Hands out tags; ``served`` moves the virtual clock when a task leaves the queue."""

    def __init__(self) -> None:
        self.virtual = 0.0
        self._last: dict[str, float] = {}

    def tag(self, owner: str) -> float:
        tag = max(self.virtual, self._last.get(owner, 0.0)) + 1.0
        self._last[owner] = tag
        return tag

    def served(self, tag: float) -> None:
        self.virtual = max(self.virtual, tag)
        if len(self._last) > 10_000:  # owners long gone need no memory
            self._last = {o: t for o, t in self._last.items() if t > self.virtual}


def fair_order(waiting: Iterable[Waiting]) -> list[Waiting]:
    return sorted(waiting, key=lambda w: (w.tag, w.seq))


def position(order: Sequence[Waiting], uuid: str) -> int:
    """1-based place of ``uuid`` in ``order`` (0 if absent)."""
    for i, w in enumerate(order, 1):
        if w.uuid == uuid:
            return i
    return 0
