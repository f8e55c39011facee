"""Fair queue order, pure."""

from __future__ import annotations

from clusterodm.tasks.queue import Waiting, fair_order, position


def w(uuid: str, owner: str, seq: int) -> Waiting:
    return Waiting(uuid, owner, 1, seq)


def test_one_owner_is_fifo() -> None:
    order = fair_order([w("c", "a", 3), w("a", "a", 1), w("b", "a", 2)])
    assert [x.uuid for x in order] == ["a", "b", "c"]


def test_owners_take_turns() -> None:
    many = [w(f"a{i}", "alice", i) for i in range(1, 51)]
    one = w("b1", "bob", 60)
    order = fair_order([*many, one])
    assert position(order, "b1") == 2, "bob's only task goes right after alice's first"
    assert [x.uuid for x in order[:4]] == ["a1", "b1", "a2", "a3"]


def test_position_of_absent_is_zero() -> None:
    assert position([], "x") == 0
