"""Fair order for tasks waiting at the proxy. Pure: no I/O, no clock.

Start-time fair queuing: each waiting task gets a tag when it joins, one more than the larger
of its owner's previous tag and the tag of the last task sent on. Tasks leave in tag order
(then arrival order). A user's tasks thus take turns with everyone else's: one user's fifty
tasks never starve another user's one, and a user who just got a slot waits behind those who
did not.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from clusterodm.model import Waiting

__all__ = ["FairTags", "Waiting", "fair_order", "position"]


class FairTags:
    """Hands out tags; ``served`` moves the virtual clock when a task leaves the queue.

    The shared queue of several instances applies the same rule inside the store
    (``Store.queue_join``), so its order is this one.
    """

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
