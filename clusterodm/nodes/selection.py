"""Best-node rules, pure: data and the current state in, an ordered choice out. No I/O.

The original's order: candidates are online, unlocked, not auto-spawned, with ``maxImages`` unset
or >= the image count; sorted by smallest maxImages first, then most available slots, then
smallest queue, then least recently chosen. The first candidate with a free slot wins; if none has
one, the first candidate anyway (it queues on the node).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from clusterodm.model import Node

_HUGE = 2**53


@dataclass(frozen=True, slots=True)
class NodeState:
    """What selection needs to know about a node at one instant."""

    node: Node
    online: bool
    available_slots: int
    last_chosen: int  # turn counter value when last chosen (0 = never)


def candidates(states: Sequence[NodeState], images: int) -> list[NodeState]:
    """Online, unlocked, not draining, static nodes that can take ``images`` images, best first."""
    eligible = [
        s
        for s in states
        if s.online
        and not s.node.locked
        and not s.node.draining
        and not s.node.auto_spawned
        and s.node.info is not None
        and (s.node.info.max_images is None or s.node.info.max_images >= images)
    ]

    def order(s: NodeState) -> tuple[int, int, int, int]:
        info = s.node.info
        assert info is not None
        max_images = info.max_images if info.max_images is not None else _HUGE
        return (max_images, -s.available_slots, info.task_queue_count, s.last_chosen)

    return sorted(eligible, key=order)


def best_node(
    states: Sequence[NodeState], images: int, *, require_slot: bool = False
) -> Node | None:
    """The node a new task of ``images`` images should go to, or None.

    ``require_slot`` (used by the proxy queue) refuses to pick a full node instead of
    falling back to the first candidate as the original does.
    """
    ordered = candidates(states, images)
    for s in ordered:
        if s.available_slots > 0:
            return s.node
    if ordered and not require_slot:
        return ordered[0].node
    return None


def available_slots(node: Node, transients: int) -> int:
    """max(0, maxParallelTasks - taskQueueCount - transients), as the original counts."""
    if node.info is None:
        return 0
    return max(0, node.info.max_parallel_tasks - node.info.task_queue_count - transients)
