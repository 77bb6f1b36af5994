from __future__ import annotations

import pytest

from wx_orchestration.core.coalescing import LaneQueue


def queue_with(keys: list[str], max_keys: int = 3) -> tuple[LaneQueue[int, str], int]:
    queue: LaneQueue[int, str] = LaneQueue(max_keys, full_after_s=10.0)
    ticket = queue.open_ticket()
    queue.add(ticket, ((n, key) for n, key in enumerate(keys)), now=10.0)
    return queue, ticket


def test_a_call_takes_everything_waiting_up_to_its_distinct_keys() -> None:
    queue, _ = queue_with(["a", "b", "a", "c", "d", "b", "e"])
    first = queue.take()
    # a, b and c fill the call; the later a and b ride along; d and e wait for the next.
    assert [w.item for w in first] == [0, 1, 2, 3, 5]
    assert [w.item for w in queue.take()] == [4, 6]
    assert queue.take() == []


def test_fullness_and_callers_follow_the_distinct_keys_waiting() -> None:
    queue, _ = queue_with(["a", "a", "b"], max_keys=4)
    assert queue.fullness(now=10.0) == 0.5
    assert queue.callers_wanted() == 1
    queue.add(queue.open_ticket(), [(9, f"k{n}") for n in range(7)], now=11.0)
    assert queue.fullness(now=11.0) == 1.0
    assert queue.callers_wanted() == 3  # nine keys: two full calls and a partial one
    queue.take()
    queue.take()
    queue.take()
    assert (queue.fullness(now=11.0), queue.callers_wanted()) == (0.0, 0)


def test_a_long_wait_counts_as_a_fuller_call() -> None:
    queue, _ = queue_with(["a"], max_keys=100)  # waiting since 10.0
    assert queue.fullness(now=10.0) == 0.01
    assert queue.fullness(now=15.0) == 0.5
    assert queue.fullness(now=30.0) == 1.0


def test_a_ticket_is_done_once_every_play_it_brought_is_settled() -> None:
    queue, ticket = queue_with(["a", "b", "c", "d"])
    assert queue.state(ticket) == "waiting"
    queue.settled(queue.take(), ok=True)
    assert queue.state(ticket) == "waiting"
    queue.settled(queue.take(), ok=True)
    assert queue.state(ticket) == "done"


def test_a_ticket_with_a_play_in_a_failed_call_is_never_done() -> None:
    queue, ticket = queue_with(["a"], max_keys=1)
    other = queue.open_ticket()
    queue.add(other, [(7, "b")], now=12.0)
    queue.settled(queue.take(), ok=False)
    queue.settled(queue.take(), ok=True)
    assert (queue.state(ticket), queue.state(other)) == ("failed", "done")
    queue.close_ticket(ticket)
    assert queue.state(ticket) == "done"


def test_plays_waiting_too_long_and_a_stopping_tickets_plays_leave_the_queue() -> None:
    queue, ticket = queue_with(["a", "b"])
    later = queue.open_ticket()
    queue.add(later, [(5, "c")], now=20.0)
    assert queue.oldest_since() == 10.0
    assert [w.item for w in queue.take_since(15.0)] == [0, 1]
    assert queue.oldest_since() == 20.0
    assert [w.item for w in queue.take_ticket(later)] == [5]
    assert queue.oldest_since() is None
    # Settling what a closed ticket brought is harmless.
    queue.close_ticket(ticket)
    queue.settled([], ok=True)


def test_a_call_carries_at_least_one_key() -> None:
    with pytest.raises(ValueError, match="at least one"):
        LaneQueue(0, full_after_s=10.0)
