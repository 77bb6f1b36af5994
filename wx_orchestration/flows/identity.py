"""One shard's identity refresh: select → bulk-resolve → plan → write, batch after batch.

Kept free of Dagster so it can be driven and tested with a plain connection and client; the
asset in `defs/identity/assets.py` wraps it with config, metadata and checks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
import sentry_sdk

from wx_orchestration.clients.lml import LmlApi, LmlError
from wx_orchestration.contracts.lml import BulkResolveResponse
from wx_orchestration.core.identity import (
    IdentityDiff,
    IdentityTotals,
    LibraryRow,
    diff_writes,
    plan_batch,
)
from wx_orchestration.db.identity import (
    Selection,
    current_rows,
    select_stale_batch,
    write_batch,
)

log = logging.getLogger("wx_orchestration.identity")


class LmlAuthError(RuntimeError):
    """LML refused our key: stop at once rather than burn through every batch."""


class BulkResolveMissing(RuntimeError):
    """LML answered 404 for the bulk-resolve endpoint: an LML too old to have it (the
    February 2026 one). No later batch can fare better, so the run stops at the first."""


@dataclass(frozen=True)
class RefreshOptions:
    selection: Selection
    batch_size: int = 500
    dry_run: bool = False


@dataclass
class RefreshResult:
    totals: IdentityTotals = field(default_factory=IdentityTotals)
    diff: IdentityDiff | None = None
    batches: int = 0


def _resolve(
    lml: LmlApi, batch: list[LibraryRow], totals: IdentityTotals
) -> BulkResolveResponse | None:
    """LML's answer for the batch, or None when the call failed (every row: `lml_error`)."""
    with sentry_sdk.start_span(op="lml.bulk_resolve_libraries") as span:
        span.set_data("lml.batch_size", len(batch))
        try:
            # The station's consumer always asks for tracks: without them no compilation resolves.
            response = lml.bulk_resolve_libraries(
                [row.as_input() for row in batch], include_tracks=True, stats=totals
            )
        except LmlError as exc:
            if exc.kind == "auth":
                raise LmlAuthError(
                    f"LML refused the API key (HTTP {exc.status}); check LML_API_KEY. "
                    "The refresh stopped before sending more batches."
                ) from exc
            if exc.status == 404:
                raise BulkResolveMissing(
                    "this LML has no bulk-resolve endpoint (HTTP 404); library identity needs "
                    "an LML that serves it. Nothing was written."
                ) from None
            log.warning(
                "bulk-resolve of %d rows failed (%s, status %s, retryable=%s): rows stay "
                "selectable for the next run",
                len(batch),
                exc.kind,
                exc.status,
                exc.retryable,
            )
            return None
        for key, value in (response.cache_stats or {}).items():
            span.set_data(f"lml.cache.{key}", value)
        return response


def refresh_shard(
    conn: psycopg.Connection,
    lml: LmlApi,
    options: RefreshOptions,
    *,
    progress: Callable[[str], None] = log.info,
) -> RefreshResult:
    """Refresh every stale row of one shard. `conn` must be in autocommit mode: each batch is
    its own transaction and nothing is held open across an LML call.

    One LML call is in flight while the previous batch is written, so database time hides
    behind LML time; never more than one, so a run asks no more of LML than a sequential one.
    """
    if not conn.autocommit:
        raise ValueError("refresh_shard needs an autocommit connection")
    result = RefreshResult(diff=IdentityDiff() if options.dry_run else None)
    totals = result.totals

    def next_batch(after_id: int) -> list[LibraryRow]:
        batch = select_stale_batch(
            conn, options.selection, after_id=after_id, limit=options.batch_size
        )
        result.batches += bool(batch)
        totals.scanned += len(batch)
        return batch

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lml-identity") as lml_thread:
        batch = next_batch(0)
        answer = lml_thread.submit(_resolve, lml, batch, totals) if batch else None
        while batch and answer is not None:
            following = next_batch(batch[-1].library_id)
            response = answer.result()  # an auth error stops the run here
            answer = lml_thread.submit(_resolve, lml, following, totals) if following else None
            _record(conn, batch, response, result)
            progress(
                f"shard {options.selection.shard:02d} batch {result.batches}: {len(batch)} "
                f"rows up to id {batch[-1].library_id}; {totals.scanned} scanned so far"
            )
            batch = following
    return result


def _record(
    conn: psycopg.Connection,
    batch: list[LibraryRow],
    response: BulkResolveResponse | None,
    result: RefreshResult,
) -> None:
    """Write (or, in a dry run, diff) one batch's verdicts and count its outcomes."""
    totals = result.totals
    if response is None:
        totals.skip("lml_error", len(batch))
        return
    plan = plan_batch(batch, response)
    if result.diff is not None:
        main, sources = current_rows(conn, [w.library_id for w in plan.writes])
        diff_writes(plan.writes, main, sources, result.diff)
        plan.apply_to(
            totals,
            written=len(plan.writes),
            compilations_written=len(plan.compilations),
            writer_errors=0,
        )
    else:
        outcome = write_batch(conn, plan)
        plan.apply_to(
            totals,
            written=outcome.written,
            compilations_written=outcome.compilations_written,
            writer_errors=outcome.writer_errors,
            track_rows=outcome.track_rows,
        )
