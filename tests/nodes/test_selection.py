"""Best-node rules, table-driven, no I/O."""

from __future__ import annotations

import pytest

from clusterodm.model import Node, NodeInfo
from clusterodm.nodes.selection import NodeState, available_slots, best_node


def state(
    port: int,
    *,
    max_images: int | None = None,
    slots: int = 1,
    queue: int = 0,
    online: bool = True,
    locked: bool = False,
    auto: bool = False,
    chosen: int = 0,
) -> NodeState:
    info = NodeInfo(version="2.2.4", task_queue_count=queue, max_images=max_images)
    node = Node("h", port, locked=locked, info=info, machine={"id": "m"} if auto else None)
    return NodeState(node, online, slots, chosen)


@pytest.mark.parametrize(
    ("states", "images", "expected"),
    [
        ([state(1), state(2, slots=2)], 10, 2),  # most free slots
        ([state(1, max_images=500), state(2, max_images=100)], 50, 2),  # smallest maxImages
        ([state(1, max_images=100), state(2)], 50, 1),  # unset maxImages sorts last
        ([state(1, max_images=10), state(2)], 50, 2),  # too small is never a candidate
        ([state(1, queue=3, slots=0), state(2, queue=1, slots=0)], 5, 2),  # all full: queue
        ([state(1, chosen=5), state(2, chosen=2)], 5, 2),  # least recently chosen
        ([state(1, online=False), state(2)], 5, 2),
        ([state(1, locked=True), state(2)], 5, 2),
        ([state(1, auto=True), state(2)], 5, 2),
        ([state(1, slots=0), state(2, slots=1, queue=4)], 5, 2),  # free slot wins
        ([state(1, online=False)], 5, None),
        ([state(1, max_images=3)], 5, None),
    ],
)
def test_best_node(states: list[NodeState], images: int, expected: int | None) -> None:
    best = best_node(states, images)
    assert (best.port if best else None) == expected


def test_require_slot_refuses_full_nodes() -> None:
    full = [state(1, slots=0)]
    assert best_node(full, 1) is not None
    assert best_node(full, 1, require_slot=True) is None


def test_available_slots() -> None:
    node = Node("h", 1, info=NodeInfo(task_queue_count=1, max_parallel_tasks=3))
    assert available_slots(node, 0) == 2
    assert available_slots(node, 5) == 0
    assert available_slots(Node("h", 2), 0) == 0
