"""One queue of waiting plays per lane and process, so each LML call carries all of them. Pure.

Under the station's budget (50 calls a minute) a call may have to wait for its slot. A play that
arrives meanwhile joins that call instead of waiting for a slot of its own: the queue holds every
play waiting in the process, a caller asks the budget for a slot with the queue's `fullness`
(the fuller, the more of the saved burst it may spend: `core.budget.Bucket`), and takes what is
waiting only once granted. So no slot is spent on a call that could have been fuller, and under
pressure calls get fuller, never more numerous.

A play's wait counts too: the oldest play waiting `full_after_s` makes the call count as full.
Under a steady stream that changes nothing (calls fill first), but the last plays of a stream,
too few to fill a call, no longer wait for every saved call to come back (simulated at 10 plays/s
under 50 calls a minute: the same 23 calls, the slowest play 1.1 s instead of 4.7 s).

Plays are keyed by what LML is asked: plays sharing a key share one item, and a call carries up
to `max_keys` distinct keys (plays of a key already in the call ride along).

Each batch read from the stream is a ticket. Its entries are acknowledged once every play it
brought is settled (carried by a call, or left for the backlog), never before; a ticket whose
plays went into a call that failed is never acknowledged, so the stream delivers it again.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

TicketState = Literal["waiting", "done", "failed"]


@dataclass(frozen=True)
class Waiting(Generic[T, K]):
    item: T
    key: K
    ticket: int
    since: float


class LaneQueue(Generic[T, K]):
    def __init__(self, max_keys: int, full_after_s: float) -> None:
        if max_keys < 1:
            raise ValueError("a call carries at least one key")
        self.max_keys = max_keys
        self.full_after_s = full_after_s
        self._waiting: list[Waiting[T, K]] = []
        self._unsettled: dict[int, int] = {}
        self._failed: set[int] = set()
        self._next_ticket = 0

    def open_ticket(self) -> int:
        self._next_ticket += 1
        self._unsettled[self._next_ticket] = 0
        return self._next_ticket

    def add(self, ticket: int, items: Iterable[tuple[T, K]], now: float) -> None:
        for item, key in items:
            self._waiting.append(Waiting(item, key, ticket, now))
            self._unsettled[ticket] += 1

    def keys_waiting(self) -> int:
        return len({w.key for w in self._waiting})

    def fullness(self, now: float) -> float:
        """How full a call taking everything now would be (0..1), its oldest play's wait
        counted against `full_after_s`."""
        oldest = self.oldest_since()
        waited = 0.0 if oldest is None else (now - oldest) / self.full_after_s
        return min(1.0, max(self.keys_waiting() / self.max_keys, waited))

    def callers_wanted(self) -> int:
        """Callers that should be waiting for a slot at once: one per full call's worth."""
        return math.ceil(self.keys_waiting() / self.max_keys)

    def oldest_since(self) -> float | None:
        return min((w.since for w in self._waiting), default=None)

    def take(self) -> list[Waiting[T, K]]:
        """Everything waiting, oldest first, up to `max_keys` distinct keys."""
        keys: set[K] = set()
        taken: list[Waiting[T, K]] = []
        kept: list[Waiting[T, K]] = []
        for waiting in self._waiting:
            if waiting.key in keys or len(keys) < self.max_keys:
                keys.add(waiting.key)
                taken.append(waiting)
            else:
                kept.append(waiting)
        self._waiting = kept
        return taken

    def take_since(self, cutoff: float) -> list[Waiting[T, K]]:
        """The plays waiting since before `cutoff`."""
        taken = [w for w in self._waiting if w.since < cutoff]
        self._waiting = [w for w in self._waiting if w.since >= cutoff]
        return taken

    def take_ticket(self, ticket: int) -> list[Waiting[T, K]]:
        taken = [w for w in self._waiting if w.ticket == ticket]
        self._waiting = [w for w in self._waiting if w.ticket != ticket]
        return taken

    def settled(self, taken: Iterable[Waiting[T, K]], *, ok: bool) -> None:
        for waiting in taken:
            if waiting.ticket not in self._unsettled:
                continue  # closed by its sink meanwhile (stopping)
            self._unsettled[waiting.ticket] -= 1
            if not ok:
                self._failed.add(waiting.ticket)

    def state(self, ticket: int) -> TicketState:
        if ticket in self._failed:
            return "failed"
        return "waiting" if self._unsettled.get(ticket, 0) > 0 else "done"

    def close_ticket(self, ticket: int) -> None:
        self._unsettled.pop(ticket, None)
        self._failed.discard(ticket)
