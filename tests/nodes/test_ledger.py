"""SlotLedger: a node's queue count between two /info reads, no I/O.

The property test plays a node against the ledger: tasks sent, finished unseen, seen in status
answers, cancelled through the cluster, and /info reads that are asked before some events and
answered after them. The count the ledger gives must never be below the node's true count (a
task would be sent to a busy node and queue there) and must be exact after a read with nothing
in flight.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from clusterodm.nodes.ledger import SlotLedger

KEY = "n:1"


def count(ledger: SlotLedger, info: int) -> int:
    return max(0, info + ledger.adjustment(KEY))


def test_a_sent_task_counts_until_a_read_asked_after_it() -> None:
    ledger = SlotLedger()
    ledger.sent(KEY, "a", now_ms=10)
    assert count(ledger, 0) == 1 and ledger.pending(KEY)
    ledger.read(KEY, asked_ms=5)  # asked before the send: the answer does not include it
    assert count(ledger, 0) == 1
    ledger.read(KEY, asked_ms=11)
    assert count(ledger, 1) == 1 and not ledger.pending(KEY)


def test_an_end_frees_the_slot_at_once_and_only_once() -> None:
    ledger = SlotLedger()
    ledger.sent(KEY, "a", now_ms=1)
    ledger.read(KEY, asked_ms=2)  # the node counts it: 1
    ledger.seen_active(KEY, "a", asked_ms=3)
    assert ledger.ended(KEY, "a", now_ms=4)
    assert count(ledger, 1) == 0
    assert not ledger.ended(KEY, "a", now_ms=5)  # seen finished again, then removed
    assert count(ledger, 1) == 0


def test_a_task_that_ended_before_the_last_read_is_not_taken_off_again() -> None:
    ledger = SlotLedger()
    ledger.sent(KEY, "a", now_ms=1)
    # "a" finishes on the node unseen; the read asked at 3 no longer counts it, "b" runs
    ledger.read(KEY, asked_ms=3)
    assert not ledger.ended(KEY, "a", now_ms=4)  # seen finished only now
    assert count(ledger, 1) == 1  # "b" still holds the slot


def test_a_bounded_read_errs_towards_busy() -> None:
    ledger = SlotLedger()
    ledger.sent(KEY, "a", now_ms=1)
    ledger.read(KEY, asked_ms=-10)
    ledger.seen_active(KEY, "a", asked_ms=2)
    ledger.ended(KEY, "a", now_ms=5)
    # another instance stored a read answered at 6, asked somewhere in [-4, 6]
    ledger.read(KEY, asked_ms=-4, answered_ms=6)
    assert ledger.adjustment(KEY) == 1  # the end is dropped, the send is kept
    ledger.forget(KEY)
    assert ledger.adjustment(KEY) == 0


ops = st.lists(
    st.tuples(
        st.sampled_from(["send", "finish", "observe", "cancel", "ask", "answer", "restart"]),
        st.integers(0, 5),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_the_count_is_never_below_the_nodes_and_exact_after_a_quiet_read(
    steps: list[tuple[str, int]],
) -> None:
    ledger = SlotLedger()
    active: set[str] = set()  # the node's queued or running tasks
    info = 0  # its count as last read
    asked: tuple[int, int] | None = None  # a read in flight: (asked at, the node's count then)
    now = 0
    for op, n in steps:
        now += 1
        uuid = f"t{n}"
        if op == "send" and uuid not in active:
            active.add(uuid)
            ledger.sent(KEY, uuid, now)
        elif op == "restart" and uuid not in active:
            active.add(uuid)
            ledger.sent(KEY, uuid, now)
        elif op == "finish":
            active.discard(uuid)  # on the node, nobody looking
        elif op == "observe":
            if uuid in active:
                ledger.seen_active(KEY, uuid, now)
            else:
                ledger.ended(KEY, uuid, now)
        elif op == "cancel":
            active.discard(uuid)
            ledger.ended(KEY, uuid, now)
        elif op == "ask" and asked is None:
            asked = (now, len(active))
        elif op == "answer" and asked is not None:
            ledger.read(KEY, asked[0])
            info = asked[1]
            asked = None
        assert count(ledger, info) >= len(active), (op, uuid)
    now += 1
    ledger.read(KEY, now)
    assert count(ledger, len(active)) == len(active)
