"""The enrichment report's arithmetic, on pandas frames (issue #18). Pure: the queries are in
`db/lifecycle.py`, the asset in `defs/lifecycle/assets.py`."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

import pandas as pd

STATUSES = ("enriched_match", "enriched_no_match", "failed_no_retry", "pending", "enriching")


def _by_status(plays: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """`plays` (columns keys + status, rows) pivoted to one column per status, with totals and
    the match rate among rows that have a verdict."""
    wide = plays.pivot_table(index=keys, columns="status", values="rows", aggfunc="sum")
    wide = wide.reindex(columns=list(STATUSES), fill_value=0).fillna(0).astype(int)
    wide["tracks"] = wide.sum(axis=1)
    decided = wide["enriched_match"] + wide["enriched_no_match"]
    wide["match_rate"] = (wide["enriched_match"] / decided.where(decided > 0)).round(3)
    return wide.reset_index()


def match_rate_by_day(plays: pd.DataFrame) -> pd.DataFrame:
    if plays.empty:
        return pd.DataFrame(columns=["day", *STATUSES, "tracks", "match_rate"])
    grouped = pd.DataFrame(plays.groupby(["day", "status"], as_index=False)["rows"].sum())
    frame = _by_status(grouped, ["day"])
    frame["day"] = frame["day"].astype(str)
    return frame.sort_values("day")


def match_rate_by_show(plays: pd.DataFrame, top: int = 20) -> pd.DataFrame:
    """The `top` shows with most tracks in the window."""
    if plays.empty:
        return pd.DataFrame(columns=["show_id", *STATUSES, "tracks", "match_rate"])
    shows = plays.fillna({"show_id": -1})
    grouped = pd.DataFrame(shows.groupby(["show_id", "status"], as_index=False)["rows"].sum())
    frame = _by_status(grouped, ["show_id"])
    frame["show_id"] = frame["show_id"].astype(int)
    return frame.sort_values(["tracks", "show_id"], ascending=[False, True]).head(top)


def lifecycle_yield(runs: pd.DataFrame) -> pd.DataFrame:
    """Per lifecycle kind: rows asked, what came of them, the re-ask yield (matches per row
    asked) and LML calls per enriched row (calls per row that got a match or a no-match)."""
    columns = ["kind", "runs", "asked", "matched", "stamped", "not_a_verdict", "upgraded"]
    if runs.empty:
        return pd.DataFrame(columns=[*columns, "lml_calls", "yield", "lml_calls_per_enriched_row"])
    frame = runs.groupby("kind", as_index=False).agg(
        runs=("asked", "size"),
        asked=("asked", "sum"),
        matched=("matched", "sum"),
        stamped=("stamped", "sum"),
        not_a_verdict=("not_a_verdict", "sum"),
        upgraded=("upgraded", "sum"),
        lml_calls=("lml_calls", "sum"),
    )
    asked = frame["asked"].where(frame["asked"] > 0)
    enriched = (frame["matched"] + frame["stamped"]).where(lambda s: s > 0)
    frame["yield"] = (frame["matched"] / asked).round(3)
    frame["lml_calls_per_enriched_row"] = (frame["lml_calls"] / enriched).round(3)
    return frame


def vega_lite_match_rate(by_day: pd.DataFrame) -> dict[str, Any]:
    """A stacked bar per day of track rows by status, with the match rate as a line."""
    long = by_day.melt(id_vars=["day"], value_vars=list(STATUSES), var_name="status")
    values = [
        {"day": r["day"], "status": r["status"], "rows": int(r["value"])}
        for r in long.to_dict("records")
        if r["value"]
    ]
    rates = [
        {"day": r["day"], "match_rate": float(r["match_rate"])}
        for r in by_day.to_dict("records")
        if pd.notna(r["match_rate"])
    ]
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "Flowsheet track rows by enrichment status, per day",
        "resolve": {"scale": {"y": "independent"}},
        "layer": [
            {
                "data": {"values": values},
                "mark": "bar",
                "encoding": {
                    "x": {"field": "day", "type": "ordinal"},
                    "y": {"field": "rows", "type": "quantitative", "stack": True},
                    "color": {"field": "status", "type": "nominal"},
                },
            },
            {
                "data": {"values": rates},
                "mark": {"type": "line", "point": True, "color": "black"},
                "encoding": {
                    "x": {"field": "day", "type": "ordinal"},
                    "y": {
                        "field": "match_rate",
                        "type": "quantitative",
                        "scale": {"domain": [0, 1]},
                    },
                },
            },
        ],
    }


@dataclass(frozen=True)
class Report:
    by_day: pd.DataFrame
    by_show: pd.DataFrame
    no_match_reasons: pd.DataFrame
    parked_reasons: pd.DataFrame
    lifecycle: pd.DataFrame
    top_unmatched: pd.DataFrame

    def tables(self) -> dict[str, pd.DataFrame]:
        return {
            "match rate by day": self.by_day,
            "match rate by show": self.by_show,
            "no-match rows by re-ask state": self.no_match_reasons,
            "parked rows by reason": self.parked_reasons,
            "lifecycle yield and LML calls per enriched row": self.lifecycle,
            "top unmatched artists": self.top_unmatched,
        }


def report_html(report: Report, title: str, chart: dict[str, Any]) -> str:
    """One page a librarian can open: every table, and the chart drawn by vega-embed."""
    sections = "\n".join(
        f"<h2>{html.escape(name)}</h2>\n"
        + (frame.to_html(index=False, na_rep="") if len(frame) else "<p>none</p>")
        for name, frame in report.tables().items()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>
<script src="https://cdn.jsdelivr.net/npm/vega-lite@5"></script>
<script src="https://cdn.jsdelivr.net/npm/vega-embed@6"></script></head>
<body><h1>{html.escape(title)}</h1><div id="chart"></div>
<script>vegaEmbed("#chart", {json.dumps(chart)});</script>
{sections}
</body></html>
"""


def total(frame: pd.DataFrame, column: str) -> int:
    return int(frame[column].to_numpy().sum())
