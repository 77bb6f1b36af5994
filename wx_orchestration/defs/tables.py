"""Dagster's native table metadata for run results (the UI renders, sorts and exports these)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import dagster as dg

Cell = str | int | float | bool | None


def table(
    columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[Cell]]
) -> dg.TableMetadataValue:
    """A table of `rows`; `columns` are (name, Dagster column type) pairs."""
    names = [name for name, _ in columns]
    return dg.MetadataValue.table(
        records=[dg.TableRecord(dict(zip(names, row, strict=True))) for row in rows],
        schema=dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns]),
    )


def outcome_table(counts: Iterable[tuple[str, int]], total: int) -> dg.TableMetadataValue:
    """Rows per outcome and each outcome's share of `total`."""
    return table(
        [("outcome", "string"), ("rows", "int"), ("share", "float")],
        ((outcome, rows, round(rows / max(total, 1), 4)) for outcome, rows in counts),
    )
