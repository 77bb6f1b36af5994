"""The enrichment report's arithmetic and its chart, on pandas frames (issue #18). Pure: the
queries are in `db/lifecycle.py`, the asset (which writes the files) in
`defs/lifecycle/assets.py`."""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

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


STATUS_COLOURS = {
    "enriched_match": "#2e7d32",
    "enriched_no_match": "#ef6c00",
    "failed_no_retry": "#c62828",
    "pending": "#9e9e9e",
    "enriching": "#1565c0",
}
CHART_TITLE = "Flowsheet track rows by enrichment status, per day"


def match_rate_png(by_day: pd.DataFrame) -> bytes:
    """A stacked bar per day of track rows by status, with the match rate as a line on its
    own 0-1 axis; as PNG bytes."""
    # A bare Agg canvas, not pyplot: no display needed, and no process-wide figure state shared
    # between runs in one process.
    figure = Figure(figsize=(10, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    rows = figure.add_subplot()
    days = by_day["day"].astype(str).tolist()
    x = list(range(len(days)))
    bottom = [0] * len(days)
    for status in STATUSES:
        counts = by_day[status].astype(int).tolist()
        rows.bar(x, counts, bottom=bottom, label=status, color=STATUS_COLOURS[status])
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    # Set by hand: an empty status's zero-height bar sits on top of the stack and would pin the
    # axis to it (a bar's base is a sticky edge), leaving no headroom.
    rows.set_ylim(0, max([*bottom, 1]) * 1.05)
    rows.set_ylabel("track rows")
    # At most 15 day labels, so a long window stays readable.
    step = max(1, math.ceil(len(days) / 15))
    rows.set_xticks(x[::step], days[::step], rotation=45, ha="right")
    rate = rows.twinx()
    rates = by_day["match_rate"].astype(float).tolist()  # NaN (no verdict that day): a gap
    (line,) = rate.plot(x, rates, "o-", color="black", label="match rate")
    rate.set_ylim(0, 1.05)  # headroom, so a day at 1.0 shows its whole marker
    rate.set_ylabel("match rate")
    if not days:
        rows.text(0.5, 0.5, "no plays in the window", ha="center", transform=rows.transAxes)
    # Swatches built here, not taken from the bars: with no days there are no bars to take from.
    swatches = [Patch(color=STATUS_COLOURS[status], label=status) for status in STATUSES]
    figure.legend(handles=[*swatches, line], loc="outside right upper", fontsize="small")
    rows.set_title(CHART_TITLE)
    png = io.BytesIO()
    figure.savefig(png, format="png")
    return png.getvalue()


def chart_markdown(png: bytes) -> str:
    """The chart as a markdown image with a data URI: the Dagster UI draws it in place."""
    return f"![match rate by day](data:image/png;base64,{base64.b64encode(png).decode()})"


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


def report_html(report: Report, title: str, chart_file: str) -> str:
    """One page a librarian can open offline: the chart (the PNG `chart_file`, beside the page)
    and every table."""
    sections = "\n".join(
        f"<h2>{html.escape(name)}</h2>\n"
        + (frame.to_html(index=False, na_rep="") if len(frame) else "<p>none</p>")
        for name, frame in report.tables().items()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>
<body><h1>{html.escape(title)}</h1>
<img src="{html.escape(chart_file)}" alt="{html.escape(CHART_TITLE)}">
{sections}
</body></html>
"""


def total(frame: pd.DataFrame, column: str) -> int:
    return int(frame[column].to_numpy().sum())
