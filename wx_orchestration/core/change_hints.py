"""What the bridge publishes for a batch of notifications (DESIGN.md §6). Pure: no I/O.

A notification is a hint that a row changed, never a statement of what it holds: any role
that can connect can `pg_notify('cdc', …)` with any text. So the bridge reads the notified rows
by id and publishes them as the table holds them. The hint only says which rows to read and
whether a row was new or gone:
- a row still there is published as read, as an INSERT if it was hinted as one: listeners
  first learn of a row from its `insert`, even when it was enriched before the bridge read it;
- a DELETE is published, by id alone, only when the row is gone; a DELETE hint for a row that
  is still there was not written by the trigger and is dropped;
- an INSERT or UPDATE hint for a row that is gone is dropped: its own DELETE follows.
Several hints for one row collapse into one event, the row as it is now.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wx_orchestration.contracts.cdc import StreamEvent, TriggerAction


@dataclass(frozen=True)
class ChangeHint:
    row_id: int
    action: TriggerAction
    timestamp_ms: int | None


@dataclass
class HintedEvents:
    events: list[StreamEvent] = field(default_factory=list)
    # Hints that the table contradicts (a DELETE of a row that exists).
    contradicted: int = 0
    # Hints for rows deleted since (their DELETE hint follows or came with them).
    gone: int = 0


def hinted_row_ids(hints: Iterable[ChangeHint]) -> list[int]:
    """The rows to read, each once, in the order first hinted."""
    return list(dict.fromkeys(h.row_id for h in hints))


def events_from_hints(
    hints: Iterable[ChangeHint], rows: Mapping[int, Mapping[str, Any]], now_ms: int
) -> HintedEvents:
    """The events for `hints`, given `rows` read by id after the hints arrived."""
    by_row: dict[int, list[ChangeHint]] = {}
    for hint in hints:
        by_row.setdefault(hint.row_id, []).append(hint)
    out = HintedEvents()
    for row_id, row_hints in by_row.items():
        # The trigger's clock is only a label for the frame; a forged one may not lie ahead.
        stamps = [h.timestamp_ms for h in row_hints if h.timestamp_ms is not None]
        timestamp_ms = min(max(stamps), now_ms) if stamps else None
        actions = {h.action for h in row_hints}
        row = rows.get(row_id)
        if row is None:
            if "DELETE" in actions:
                out.events.append(StreamEvent("DELETE", {"id": row_id}, timestamp_ms, now_ms))
            else:
                out.gone += 1
            continue
        if actions == {"DELETE"}:
            out.contradicted += 1
            continue
        action = "INSERT" if "INSERT" in actions else "UPDATE"
        out.events.append(StreamEvent(action, dict(row), timestamp_ms, now_ms))
    return out
