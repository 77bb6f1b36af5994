"""The full scenario set's report: a Markdown section of `bench/RESULTS.md` and an SVG plot.

Each scenario upserts its own entry in `bench/scenario_results.json`, then the section between
`<!-- scenarios:start -->` and `<!-- scenarios:end -->` and `bench/scenario_latency.svg` are
rendered again from the whole file, so scenarios can run in any order, alone or together, and
the rest of RESULTS.md is never touched. The plot is hand-written SVG (no plotting dependency):
the cumulative distribution of play → listener latency per scenario on a log time axis.
"""

from __future__ import annotations

import json
import math
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wx_orchestration_tests.system.scenarios import ScenarioResult

BENCH = Path(__file__).resolve().parents[2] / "bench"
RESULTS_MD = BENCH / "RESULTS.md"
RESULTS_JSON = BENCH / "scenario_results.json"
PLOT = BENCH / "scenario_latency.svg"
START, END = "<!-- scenarios:start -->", "<!-- scenarios:end -->"
ORDER = ("baseline", "kill_sidecar", "kill_bridge", "postgres_restart", "redis_restart",
         "lml_faults", "everything")  # fmt: skip
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
LATENCY_SAMPLES = 400


def _entry(result: ScenarioResult) -> dict[str, Any]:
    f = result.figures
    latencies = f["latency_ms"]
    step = max(1, len(latencies) // LATENCY_SAMPLES)
    return {
        "title": result.scenario.title,
        "recorded": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round(result.seconds),
        "plays_written": result.scenario.plays,
        "rate": result.scenario.rate,
        "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in result.checks],
        "figures": {k: v for k, v in f.items() if k != "latency_ms"},
        "latency_sample_ms": latencies[::step] + ([latencies[-1]] if latencies else []),
        "drain": {
            "sweeps": result.drain.sweeps,
            "sensor_ticks": result.drain.sensor_ticks,
            "sensor_runs": result.drain.sensor_runs,
            "backfill_runs": result.drain.operator_runs,
            "stranded_before_sweep": result.drain.stranded_before_sweep,
        },
    }


def record_result(result: ScenarioResult) -> None:
    data: dict[str, Any] = {}
    if RESULTS_JSON.exists():
        data = json.loads(RESULTS_JSON.read_text())
    data[result.scenario.name] = _entry(result)
    RESULTS_JSON.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    PLOT.write_text(render_svg(data))
    write_section(render_markdown(data))


def write_section(section: str) -> None:
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else ""
    block = f"{START}\n{section.rstrip()}\n{END}"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS_MD.write_text(text)


def _ordered(data: dict[str, Any]) -> list[str]:
    return sorted(data, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _reasons(counts: dict[str, int]) -> str:
    if not counts:
        return "0"
    total = sum(counts.values())
    parts = [f"{n} x {reason}" for reason, n in sorted(counts.items(), key=lambda kv: -kv[1])[:3]]
    return f"{total} ({'; '.join(parts)})"


def _identity(materializations: list[dict[str, Any]]) -> str:
    parts = []
    for m in materializations:
        t = m.get("totals") or {}
        skipped = {k: v for k, v in (t.get("rows_skipped") or {}).items() if v}
        parts.append(
            f"shard {m.get('partition')}: scanned {t.get('scanned')} = resolved "
            f"{t.get('rows_resolved')} + compilation {t.get('rows_resolved_compilation')} + "
            f"unresolved {t.get('rows_unresolved')} + skipped {skipped or 0}"
        )
    return "; ".join(parts) or "-"


def render_markdown(data: dict[str, Any]) -> str:
    lines = [
        "## Station-day scenarios (issue #9)",
        "",
        "The whole system as separate processes (embedded PostgreSQL + Valkey, LML emulator, two "
        "`wx-sidecar` instances, Dagster jobs via `dagster job execute`, the backlog sensor "
        "ticked as the daemon would), replaying a station day while faults are injected; "
        "then drained and checked. Command: `WX_FULL_SCENARIOS=1 .venv/bin/pytest "
        "wx_orchestration_tests/system/test_station_day.py -v` (harness: "
        "`wx_orchestration_tests/system/`). Machine: "
        f"{platform.machine()}, Python {platform.python_version()}. Raw figures: "
        "`bench/scenario_results.json`.",
        "",
        "Play → listener latency is measured by the SSE listener: receipt of a row's first "
        'terminal `update` - the play\'s `add_time` (same clock). "LML calls per enriched row" '
        "counts every lookup request in the emulator's log (failed ones included) over rows "
        "finalized during the run.",
        "",
        "![play → listener latency](scenario_latency.svg)",
        "",
    ]
    for name in _ordered(data):
        e = data[name]
        f = e["figures"]
        lines += [
            f"### {name}: {e['title']}",
            "",
            f"{e['plays_written']} plays written at {e['rate']:g}/s; {e['seconds']} s end to end; "
            f"recorded {e['recorded']}.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| track rows (incl. demo day + 26 h-old import) | {f['plays']} |",
            f"| enriched during the run | {f['enriched_in_run']} "
            f"(all: {f['enriched_match']} match, {f['enriched_no_match']} no match) |",
            f"| parked (`failed_no_retry`) | {_reasons(f['parked'])} |",
            f"| pending with a recorded reason | {_reasons(f['pending_with_reason'])} |",
            f"| dead letters | {_reasons(f['dead_letter_reasons'])} |",
            f"| LML lookup calls (by status) | {f['lml_lookup_calls']} "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(f['lml_lookup_status'].items()))}) |",
            f"| LML calls per enriched row | {f['lml_calls_per_enriched_row']} |",
            f"| play → listener p50 / p99 | {_fmt_ms(f['latency_p50_ms'])} / "
            f"{_fmt_ms(f['latency_p99_ms'])} |",
            f"| identity refresh totals | {_identity(f.get('identity_totals', []))} |",
            f"| drain | {e['drain']['sweeps']} sweep, {e['drain']['sensor_ticks']} sensor "
            f"tick(s) → {e['drain']['sensor_runs']} run(s), {e['drain']['backfill_runs']} "
            f"backfill run(s); {e['drain']['stranded_before_sweep']} stranded claim(s) swept |",
            "",
            "| invariant | result |",
            "|---|---|",
            *(
                f"| {c['name']} | {'PASS' if c['ok'] else '**FAIL**'}: "
                f"{c['detail'].replace('|', '/')} |"
                for c in e["checks"]
            ),
            "",
        ]
    return "\n".join(lines)


def render_svg(data: dict[str, Any], width: int = 760, height: int = 380) -> str:
    """CDF of play → listener latency per scenario, log-scaled x axis (10 ms … max)."""
    left, right, top, bottom = 60, 170, 20, 45
    plot_w, plot_h = width - left - right, height - top - bottom
    series = [(n, data[n]["latency_sample_ms"]) for n in _ordered(data)]
    values = [v for _, vs in series for v in vs if v > 0]
    lo = 10.0
    hi = max([lo * 10, *values])
    log_lo, log_hi = math.log10(lo), math.log10(hi)

    def x(ms: float) -> float:
        clamped = min(max(ms, lo), hi)
        return left + (math.log10(clamped) - log_lo) / (log_hi - log_lo) * plot_w

    def y(share: float) -> float:
        return top + (1 - share) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="14" font-size="12">play → listener latency (CDF per scenario)</text>',
    ]
    decade = math.floor(log_lo)
    while decade <= math.ceil(log_hi):
        ms = 10.0**decade
        if lo <= ms <= hi:
            label = f"{ms / 1000:g} s" if ms >= 1000 else f"{ms:g} ms"
            parts.append(
                f'<line x1="{x(ms):.1f}" y1="{top}" x2="{x(ms):.1f}" y2="{top + plot_h}" '
                'stroke="#ddd"/>'
                f'<text x="{x(ms):.1f}" y="{top + plot_h + 15}" text-anchor="middle">{label}</text>'
            )
        decade += 1
    for share in (0, 0.5, 0.99, 1):
        parts.append(
            f'<line x1="{left}" y1="{y(share):.1f}" x2="{left + plot_w}" y2="{y(share):.1f}" '
            'stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y(share) + 4:.1f}" text-anchor="end">p{share * 100:g}</text>'
        )
    parts.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>'
    )
    for index, (name, samples) in enumerate(series):
        colour = COLOURS[index % len(COLOURS)]
        ordered = sorted(samples)
        if ordered:
            points = " ".join(
                f"{x(v):.1f},{y((i + 1) / len(ordered)):.1f}" for i, v in enumerate(ordered)
            )
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.6"/>'
            )
        ly = top + 12 + index * 16
        parts.append(
            f'<line x1="{left + plot_w + 12}" y1="{ly - 4}" x2="{left + plot_w + 30}" '
            f'y2="{ly - 4}" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{left + plot_w + 34}" y="{ly}">{name}</text>'
        )
    parts.append(
        f'<text x="{left + plot_w / 2}" y="{height - 8}" text-anchor="middle">'
        "receipt of the terminal update - add_time (log scale)</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
