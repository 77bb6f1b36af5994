"""The timing rules that keep healthy work from being taken from under its worker, stated once.

Two things hold a play while it is being enriched, and each is taken back after a while:
- its stream entry, held by a fast-path consumer from its read until its terminal write is
  acknowledged; another consumer reclaims an entry idle for `RECLAIM_IDLE_S`;
- its flowsheet claim (`enriching`), which the stale sweep returns to `pending` after the lease
  (`CLAIM_LEASE_S` by default).
Whatever a holder may spend before it lets go (gathering plays for a call, waiting for the LML
budget, the call itself) must fit inside what holds it, with a margin; otherwise the sweep or a
sibling takes rows whose lookup is still in flight, and the row is written twice. The settings and
the sweep's config are validated against these rules (`check_fast_path`, `check_lease`).
"""

from __future__ import annotations

from collections.abc import Mapping

# The stale sweep's default lease on an `enriching` claim.
CLAIM_LEASE_S = 60.0
# A fast-path consumer reclaims a sibling's stream entries idle for this long.
RECLAIM_IDLE_S = 60.0
# Slack kept inside a lease for the write that ends a claim.
LEASE_MARGIN_S = 10.0
# Slack kept inside the reclaim idle for a finalize whose connection is cut and redone.
FINALIZE_MARGIN_S = 5.0

# The fast path reads on for waiting calls this long after its own batch: under a steady stream
# it would otherwise never finish acknowledging.
FAST_PATH_GATHER_S = 10.0
# A play waits this long (unclaimed) for the LML budget before it is left to the backlog.
FAST_PATH_BUDGET_WAIT_S = 30.0
# Pending rows younger than this belong to the fast path: the backlog and the sweep's "missed"
# count leave them alone.
FAST_PATH_GRACE_S = 120.0

# A backlog batch starts LML calls for up to this long after its claim (about three seconds of
# its lane's budget: our flowsheet statements are paced at about one a second).
BACKLOG_ASK_WINDOW_S = 4.0
# The longest a backlog call waits for the budget while its batch is claimed.
BACKLOG_BUDGET_WAIT_S = 15.0

# How often the stale sweep runs; a claim older than lease + interval was missed by a sweep.
SWEEP_INTERVAL_S = 20 * 60


class ClaimTimingError(ValueError):
    """A hold could outlast what holds it; the message names each part and the sum."""


def require_inside(
    limit_name: str, limit_s: float, parts: Mapping[str, float], margin_s: float
) -> None:
    total = sum(parts.values()) + margin_s
    if limit_s > total:
        return
    spent = " + ".join(f"{name} ({seconds:g} s)" for name, seconds in parts.items())
    raise ClaimTimingError(
        f"{limit_name} ({limit_s:g} s) must be longer than {spent} + a {margin_s:g} s margin "
        f"= {total:g} s; otherwise work still in flight is taken from under its worker"
    )


def check_fast_path(
    *, max_budget_wait_s: float, lml_timeout_s: float, reclaim_idle_s: float = RECLAIM_IDLE_S
) -> None:
    """A fast-path batch is acknowledged before a sibling may reclaim its entries."""
    require_inside(
        "the reclaim idle",
        reclaim_idle_s,
        {
            "the gather window": FAST_PATH_GATHER_S,
            "WX_ENRICH_MAX_BUDGET_WAIT_S": max_budget_wait_s,
            "LML_TIMEOUT_S": lml_timeout_s,
        },
        FINALIZE_MARGIN_S,
    )


def check_lease(lease_s: float, lml_timeout_s: float) -> None:
    """A backlog claim ends (finalized or released) before the sweep's lease runs out."""
    require_inside(
        "lease_s",
        lease_s,
        {
            "the backlog's ask window": BACKLOG_ASK_WINDOW_S,
            "its budget wait": BACKLOG_BUDGET_WAIT_S,
            "the LML timeout": lml_timeout_s,
        },
        LEASE_MARGIN_S,
    )
