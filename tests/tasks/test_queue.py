"""Fair queue order, pure."""

from __future__ import annotations

from clusterodm.tasks.queue import FairTags, Waiting, fair_order, position


class Queue:
    def __init__(self) -> None:
        self.tags = FairTags()
        self.waiting: list[Waiting] = []
        self.seq = 0

    def add(self, uuid: str, owner: str) -> None:
        self.seq += 1
        self.waiting.append(Waiting(uuid, owner, 1, self.seq, self.tags.tag(owner)))

    def pop(self) -> str:
        first = fair_order(self.waiting)[0]
        self.waiting.remove(first)
        self.tags.served(first.tag)
        return first.uuid


def test_one_owner_is_fifo() -> None:
    q = Queue()
    for u in "abc":
        q.add(u, "alice")
    assert [q.pop() for _ in range(3)] == ["a", "b", "c"]


def test_late_single_task_is_not_starved() -> None:
    q = Queue()
    for i in range(1, 51):
        q.add(f"a{i}", "alice")
    q.add("b1", "bob")
    assert position(fair_order(q.waiting), "b1") == 2
    assert [q.pop() for _ in range(4)] == ["a1", "b1", "a2", "a3"]


def test_late_owner_takes_turns_with_the_busy_one() -> None:
    q = Queue()
    for i in range(1, 5):
        q.add(f"a{i}", "alice")
    assert q.pop() == "a1"  # alice's first is sent while bob has nothing waiting
    q.add("b1", "bob")
    q.add("b2", "bob")
    # bob gets every other slot from now on, not the slots after all of alice's tasks
    assert [q.pop() for _ in range(5)] == ["a2", "b1", "a3", "b2", "a4"]


def test_turns_between_two_busy_owners() -> None:
    q = Queue()
    for i in range(1, 4):
        q.add(f"a{i}", "alice")
    for i in range(1, 4):
        q.add(f"b{i}", "bob")
    assert [q.pop() for _ in range(6)] == ["a1", "b1", "a2", "b2", "a3", "b3"]


def test_position_of_absent_is_zero() -> None:
    assert position([], "x") == 0
