"""SlotLedger: what the cluster did to a node's queue since the node last counted it. Pure.

A node's ``/info`` says how many tasks it has queued or running (``taskQueueCount``), but it
is read only now and then. Between two reads the cluster knows more: it put tasks on the node,
it cancelled and removed some there, and it saw some finish in the status answers it relayed.
The ledger keeps those events, each with the time it happened, and the node's count is

    taskQueueCount (as last read) + tasks sent since - tasks seen to end since

where "since" means after the moment that ``/info`` was *asked*: an answer includes every event
that happened before its request left, so those events are dropped when it arrives, and the
ones that came later stay on top of it.

An end is counted only for a task the ledger knows was counted by the node: one sent since the
last read, or one seen queued or running in an answer asked after it. A task that finished
before the last read is not in that read's count, and seeing it finished later must not take
one off again (that would send a task to a busy node, which queues it there). So when a read
arrives, an end seen after it was asked stays only if the task was known to be active at or
after that moment (sent then, or seen active in an answer asked then): a task last known active
before the read may have ended before it too, uncounted, and taking it off would count the node
short.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

NEVER = -(2**62)
MAX_KNOWN = 10_000  # active tasks remembered per node (bounded memory; forgetting only overcounts)


@dataclass
class _NodeLedger:
    read_ms: int = NEVER  # when the last /info counted in was asked
    sent: dict[str, int] = field(default_factory=dict)  # uuid -> when it was put on the node
    #: uuid -> when it was seen to end, and when it was last known active before that
    ended: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: tasks known to be in the node's count (seen active after ``read_ms``, or sent since),
    #: with the latest time each was known active
    active: OrderedDict[str, int] = field(default_factory=OrderedDict)


class SlotLedger:
    """Per node: events since the node's last ``/info``; see the module doc."""

    def __init__(self) -> None:
        self._nodes: dict[str, _NodeLedger] = {}

    def _of(self, key: str) -> _NodeLedger:
        ledger = self._nodes.get(key)
        if ledger is None:
            ledger = self._nodes[key] = _NodeLedger()
        return ledger

    def sent(self, key: str, uuid: str, now_ms: int) -> None:
        """``uuid`` was committed on (or restarted at) the node: one more in its queue."""
        ledger = self._of(key)
        ledger.sent[uuid] = now_ms
        ledger.ended.pop(uuid, None)
        self._know(ledger, uuid, now_ms)

    def seen_active(self, key: str, uuid: str, asked_ms: int) -> None:
        """An answer asked at ``asked_ms`` said the task is queued or running on the node."""
        ledger = self._of(key)
        if asked_ms >= ledger.read_ms and uuid not in ledger.ended:
            self._know(ledger, uuid, max(asked_ms, ledger.active.get(uuid, NEVER)))

    def ended(self, key: str, uuid: str, now_ms: int) -> bool:
        """The task finished, failed, was cancelled or removed on the node; True if that
        takes one off the node's count."""
        ledger = self._nodes.get(key)
        if ledger is None or uuid not in ledger.active:
            return False
        ledger.ended[uuid] = (now_ms, ledger.active.pop(uuid))
        return True

    def read(self, key: str, asked_ms: int, answered_ms: int | None = None) -> None:
        """The node's ``/info`` asked at ``asked_ms`` arrived: it counts what happened before.

        When only a bound is known (read by another instance), ``asked_ms`` is the earliest it
        can have been asked and ``answered_ms`` the latest: sends are kept from the first, ends
        from the second, so the count errs towards busy (which a new read corrects) rather than
        free (which would send a task to a full node)."""
        ledger = self._of(key)
        if asked_ms < ledger.read_ms:
            return  # an older answer than the one already counted in
        ends_from = asked_ms if answered_ms is None else answered_ms
        ledger.read_ms = asked_ms
        ledger.sent = {u: t for u, t in ledger.sent.items() if t >= asked_ms}
        ledger.ended = {
            u: (t, known)
            for u, (t, known) in ledger.ended.items()
            if t >= ends_from and known >= asked_ms
        }
        # which of the node's tasks are in its count is known again only from later answers
        ledger.active = OrderedDict(ledger.sent.items())

    def adjustment(self, key: str) -> int:
        """Add this to the node's last ``taskQueueCount``."""
        ledger = self._nodes.get(key)
        if ledger is None:
            return 0
        return len(ledger.sent) - len(ledger.ended)

    def pending(self, key: str) -> bool:
        """Whether the node's count rests on events it has not confirmed yet."""
        ledger = self._nodes.get(key)
        return ledger is not None and bool(ledger.sent or ledger.ended)

    def forget(self, key: str) -> None:
        self._nodes.pop(key, None)

    @staticmethod
    def _know(ledger: _NodeLedger, uuid: str, at_ms: int) -> None:
        ledger.active[uuid] = at_ms
        ledger.active.move_to_end(uuid)
        while len(ledger.active) > MAX_KNOWN:
            ledger.active.popitem(last=False)
