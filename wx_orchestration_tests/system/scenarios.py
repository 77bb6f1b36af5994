"""Station-day scenarios: a timeline of faults cued by how many plays have been written.

A scenario runs: stack up → demo library and a 26-hour-old historical import → two sidecars
(the bridge's first start catches the demo day up) → the live listener connects → the writer
starts inserting plays at a steady rate while an identity refresh runs as a Dagster job → each
step fires when its share of the plays is written (the listener also drops off and comes back
with `Last-Event-ID` mid-run) → writer done, faults cleared → `drain()` → invariants.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wx_orchestration.contracts.cdc import ENRICHMENT_GROUP, EVENTLOG_GROUP
from wx_orchestration.contracts.live import LIVE_GROUP
from wx_orchestration.core.watermark_lead import MAX_LEAD_S
from wx_orchestration.devstack.lead_sampler import LeadSampler
from wx_orchestration.devstack.processes import wait_until
from wx_orchestration_tests.system.harness import (
    SCHEMA,
    DrainReport,
    HarnessConfig,
    LiveSubscriber,
    PlayWriter,
    RunRecord,
    StationHarness,
    drain,
)
from wx_orchestration_tests.system.invariants import Check, check_all
from wx_orchestration_tests.system.station_day import historical_import, plan_day

log = logging.getLogger("wx_orchestration_tests.system")


@dataclass
class ScenarioRun:
    """What steps act on."""

    harness: StationHarness
    writer: PlayWriter
    subscriber: LiveSubscriber
    scenario: Scenario
    identity_thread: threading.Thread | None = None
    identity_runs: list[RunRecord] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def wait_identity(self) -> None:
        if self.identity_thread is not None:
            self.identity_thread.join(300)
            assert not self.identity_thread.is_alive(), "identity refresh did not finish"


Action = Callable[[ScenarioRun], None]


@dataclass(frozen=True)
class Step:
    at: float  # share of the scenario's plays written when the step fires
    name: str
    action: Action


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    plays: int
    rate: float  # plays (entries) per second
    steps: tuple[Step, ...] = ()
    seed: int = 20261123
    historical: int = 40
    identity_shards: tuple[str, ...] = ("00",)
    # Faults switched on for the identity refresh only (bulk-resolve faults).
    identity_faults: tuple[tuple[str, Any], ...] = ()
    operator_backfill: bool = True
    backoff_wait_s: float = 0.0
    listener_away: tuple[float, float] = (0.3, 0.5)


@dataclass
class ScenarioResult:
    scenario: Scenario
    checks: list[Check]
    figures: dict[str, Any]
    drain: DrainReport
    seconds: float
    timeline: list[tuple[float, str]]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def summary(self) -> str:
        lines = [f"scenario {self.scenario.name} ({self.seconds:.0f}s):"]
        lines += ["  " + c.line() for c in self.checks]
        f = self.figures
        lines.append(
            f"  plays {f['plays']}, enriched in run {f['enriched_in_run']}, "
            f"statuses {f['statuses']}, dead letters {f['dead_letters']}, "
            f"LML lookup calls {f['lml_lookup_calls']} ({f['lml_lookup_status']}), "
            f"p50 {f['latency_p50_ms']} ms, p99 {f['latency_p99_ms']} ms"
        )
        lines.append(
            f"  drain: {self.drain.sweeps} sweep(s), {self.drain.sensor_ticks} sensor tick(s) "
            f"→ {self.drain.sensor_runs} run(s), {self.drain.operator_runs} backfill run(s), "
            f"stranded before sweep {self.drain.stranded_before_sweep}"
        )
        if self.drain.failed_runs:
            lines.append(f"  failed runs: {self.drain.failed_runs}")
        return "\n".join(lines)


# --- steps -------------------------------------------------------------------------------------


def _pending_enrichment_by_sidecar(harness: StationHarness) -> dict[str, int]:
    """Entries each sidecar's enrichment consumers hold unacknowledged (batches in hand)."""
    try:
        summary: Any = harness.redis().xpending("wx:cdc", ENRICHMENT_GROUP)
    except Exception:
        return {}
    held: dict[str, int] = {}
    for consumer in summary.get("consumers") or []:
        name = consumer["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        held[name.split("/")[0]] = held.get(name.split("/")[0], 0) + int(consumer["pending"])
    return held


def kill_mid_batch(pick: str) -> Action:
    """SIGKILL a sidecar while it holds claimed rows: slow LML down so batches stay in flight,
    wait until some sidecar holds unacknowledged enrichment entries and rows are `enriching`,
    kill it (`pick`: "busy" — the one holding a batch; "bridge" — the active bridge)."""

    def act(run: ScenarioRun) -> None:
        harness = run.harness
        harness.set_faults(latency_ms=1200)
        chosen: list[str] = []

        def ready() -> bool:
            held = _pending_enrichment_by_sidecar(harness)
            if not harness.enriching_claims():
                return False
            if pick == "bridge":
                leader = harness.bridge_leader()
                if leader is not None and held.get(leader):
                    chosen.append(leader)
                    return True
                return False
            busy = [n for n, count in held.items() if count and harness.sidecars[n].alive()]
            if busy:
                chosen.append(busy[0])
            return bool(busy)

        try:
            wait_until(ready, timeout=20, what=f"a {pick} sidecar holding a batch")
        except TimeoutError:
            # Still a kill, just not provably mid-batch; the run records it.
            fallback = harness.bridge_leader() if pick == "bridge" else None
            chosen.append(fallback or harness.busy_sidecar())
            run.notes.append(f"kill {pick}: no batch seen in flight; killed {chosen[-1]} anyway")
        victim = chosen[-1]
        harness.kill_sidecar(victim)
        run.killed.append(victim)
        harness.fault_off("latency_ms")
        if pick == "bridge":
            harness.wait_bridge_leader(timeout=30)

    return act


def restart_killed(run: ScenarioRun) -> None:
    for name in run.killed:
        run.harness.restart_sidecar(name)


def restart_postgres(run: ScenarioRun) -> None:
    run.wait_identity()
    run.harness.restart_postgres()


def restart_redis(run: ScenarioRun) -> None:
    run.wait_identity()
    run.harness.restart_redis_empty()


def faults(**switches: Any) -> Action:
    def act(run: ScenarioRun) -> None:
        run.harness.set_faults(**switches)

    return act


def faults_off(*names: str) -> Action:
    def act(run: ScenarioRun) -> None:
        run.harness.fault_off(*names)

    return act


def degraded_on(run: ScenarioRun) -> None:
    run.harness.set_faults(degraded=True, breaker_state="open")
    # From now on every play's lookup key is new (see invariants.no_degraded_no_match).
    run.writer.unique_token = f"degraded-{int(time.time())}"


def degraded_off(run: ScenarioRun) -> None:
    run.harness.fault_off("degraded", "breaker_state")
    run.writer.unique_token = None


# The fault families, as steps at given shares of the plays.
def five_xx(at: float, until: float) -> tuple[Step, ...]:
    return (
        Step(at, "LML 5xx burst on", faults(error_rate=0.7)),
        Step(until, "LML 5xx burst off", faults_off("error_rate")),
    )


def rate_limited(at: float, until: float) -> tuple[Step, ...]:
    return (
        Step(
            at, "LML 429 + Retry-After on", faults(rate_limit=4, rate_limit_rate=0.4, retry_after=2)
        ),
        Step(until, "LML 429 off", faults_off("rate_limit", "rate_limit_rate", "retry_after")),
    )


def timeouts(at: float, until: float) -> tuple[Step, ...]:
    return (
        Step(at, "LML timeouts on (latency 3 s > 2 s timeout)", faults(latency_ms=3000)),
        Step(until, "LML timeouts off", faults_off("latency_ms")),
    )


def degraded(at: float, until: float) -> tuple[Step, ...]:
    return (
        Step(at, "LML breaker open, degraded replies", degraded_on),
        Step(until, "LML healthy again", degraded_off),
    )


def malformed(at: float, until: float) -> tuple[Step, ...]:
    return (
        Step(at, "LML malformed JSON on", faults(malformed=0.5)),
        Step(until, "LML malformed JSON off", faults_off("malformed")),
    )


BULK_RESOLVE_FAULTS = (("short_results", True), ("foreign_results", True))


def scenarios(plays: int, rate: float) -> dict[str, Scenario]:
    """The full set; `plays`/`rate` scale every one of them alike."""
    common: dict[str, Any] = {"plays": plays, "rate": rate}
    return {
        s.name: s
        for s in (
            Scenario("baseline", "Baseline, no fault", **common),
            Scenario(
                "kill_sidecar",
                "kill -9 of a sidecar mid-batch",
                steps=(
                    Step(0.4, "kill -9 a sidecar holding a batch", kill_mid_batch("busy")),
                    Step(0.7, "restart it", restart_killed),
                ),
                **common,
            ),
            Scenario(
                "kill_bridge",
                "kill -9 of the active bridge",
                steps=(
                    Step(0.4, "kill -9 the active bridge", kill_mid_batch("bridge")),
                    Step(0.7, "restart it", restart_killed),
                ),
                **common,
            ),
            Scenario(
                "postgres_restart",
                "Postgres restarted",
                steps=(Step(0.45, "restart Postgres", restart_postgres),),
                **common,
            ),
            Scenario(
                "redis_restart",
                "Redis restarted empty",
                steps=(Step(0.45, "restart Redis empty", restart_redis),),
                **common,
            ),
            Scenario(
                "lml_faults",
                "LML faults: breaker-open degraded, 429 + Retry-After, timeouts, malformed "
                "JSON, 5xx bursts, short + foreign bulk-resolve",
                # Timeouts, malformed bodies and 5xx each open the shared breaker for its 30 s
                # cool-down (no call at all meanwhile), so they are spaced further apart, over
                # a longer day, for each to be met by real calls.
                steps=(
                    *degraded(0.04, 0.1),
                    *rate_limited(0.13, 0.18),
                    *timeouts(0.22, 0.27),
                    *malformed(0.5, 0.55),
                    *five_xx(0.78, 0.84),
                ),
                identity_faults=BULK_RESOLVE_FAULTS,
                backoff_wait_s=75.0,
                plays=plays * 3 // 2,
                rate=rate,
            ),
            Scenario(
                "everything",
                "All of the above in one run",
                steps=(
                    *degraded(0.04, 0.1),
                    Step(0.12, "kill -9 a sidecar holding a batch", kill_mid_batch("busy")),
                    *rate_limited(0.16, 0.2),
                    *malformed(0.22, 0.26),
                    Step(0.28, "restart killed sidecars", restart_killed),
                    Step(0.32, "kill -9 the active bridge", kill_mid_batch("bridge")),
                    Step(0.38, "restart Postgres", restart_postgres),
                    *timeouts(0.42, 0.46),
                    Step(0.5, "restart killed sidecars", restart_killed),
                    Step(0.7, "restart Redis empty", restart_redis),
                    *five_xx(0.8, 0.86),
                ),
                identity_faults=BULK_RESOLVE_FAULTS,
                backoff_wait_s=75.0,
                listener_away=(0.56, 0.68),
                **common,
            ),
        )
    }


# Faults that fail calls (5xx, timeouts) open the shared breaker for its 30 s cool-down, during
# which no lookup is made at all; the degraded window comes first so that its lookups happen.
SHORT = Scenario(
    "short",
    "Short (CI): breaker-open degraded window, kill -9 of the active bridge mid-batch, LML "
    "5xx burst",
    plays=200,
    rate=12.0,
    historical=20,
    steps=(
        *degraded(0.1, 0.25),
        Step(0.4, "kill -9 the active bridge", kill_mid_batch("bridge")),
        Step(0.55, "restart it", restart_killed),
        *five_xx(0.7, 0.8),
    ),
)


# --- the runner --------------------------------------------------------------------------------


def _groups(harness: StationHarness) -> list[str]:
    """The consumer groups the running sidecars use, from the roles /readyz reports."""
    body = next(
        (b for s in harness.sidecars.values() if s.alive() and (b := s.readyz()) is not None), None
    )
    checks = set((body or {}).get("checks", {}))
    groups = [EVENTLOG_GROUP]
    if "enrich" in checks:
        groups.append(ENRICHMENT_GROUP)
    if "live" in checks:
        groups.append(LIVE_GROUP)
    return groups


def _identity(run: ScenarioRun) -> None:
    harness = run.harness
    assert harness.dagster is not None
    scenario = run.scenario
    if scenario.identity_faults:
        harness.set_faults(**dict(scenario.identity_faults))
    try:
        for shard in scenario.identity_shards:
            run.identity_runs.append(
                harness.dagster.execute("library_identity_refresh_job", partition=shard)
            )
    finally:
        if scenario.identity_faults:
            harness.fault_off(*(name for name, _ in scenario.identity_faults))


def run_scenario(
    root: Path, scenario: Scenario, config: HarnessConfig | None = None
) -> ScenarioResult:
    began = time.monotonic()
    with StationHarness(root, config) as harness:
        library, _ = harness.load_station()
        show_ids = harness.add_shows(max(2, scenario.plays // 60))
        day = plan_day(seed=scenario.seed, plays=scenario.plays, library=library, show_ids=show_ids)
        history = historical_import(
            seed=scenario.seed,
            plays=scenario.historical,
            library=library,
            show_id=show_ids[0],
            now=datetime.now(UTC),
        )
        harness.insert_batch(history)
        harness.note(f"historical import: {len(history)} plays from 25-26 h ago")
        harness.start_sidecars()
        groups = _groups(harness)
        subscriber = LiveSubscriber(harness.live_sidecar_urls)
        writer = PlayWriter(harness.database_url, day.entries, scenario.rate)
        run = ScenarioRun(harness, writer, subscriber, scenario)
        run_started = datetime.now(UTC)
        leads = LeadSampler(harness.database_url, SCHEMA, every_s=0.2)
        try:
            leads.start()
            subscriber.start()
            if not subscriber.available:
                harness.note("no /events/stream on the sidecars: live-feed checks skipped")
            run.identity_thread = threading.Thread(target=_identity, args=(run,), daemon=True)
            run.identity_thread.start()
            writer.start()
            away, back = scenario.listener_away
            steps = sorted(
                [
                    *scenario.steps,
                    Step(away, "listener disconnects", lambda r: r.subscriber.disconnect()),
                    Step(
                        back, "listener resumes (Last-Event-ID)", lambda r: r.subscriber.reconnect()
                    ),
                ],
                key=lambda s: s.at,
            )
            budget = scenario.plays / scenario.rate * 3 + 120
            for step in steps:
                if step.name.startswith("listener") and not subscriber.available:
                    continue
                writer.wait_tracks(round(step.at * day.plays), timeout=budget)
                if writer.error is not None:
                    raise writer.error
                harness.note(f"step @{step.at:.2f}: {step.name}")
                step.action(run)
            wait_until(writer.done.is_set, timeout=budget, what="the writer to finish the day")
            if writer.error is not None:
                raise writer.error
            run.wait_identity()
            harness.clear_faults()
            run.writer.unique_token = None
            report = drain(
                harness,
                subscriber,
                groups=groups,
                operator_backfill=scenario.operator_backfill,
                backoff_wait_s=scenario.backoff_wait_s,
            )
            checks, figures = check_all(
                harness,
                subscriber,
                groups=groups,
                unique_plays=writer.unique_ids,
                identity_shards=[
                    r.partition for r in run.identity_runs if r.partition and r.returncode == 0
                ],
                run_started=run_started,
            )
            failed_identity = [r for r in run.identity_runs if r.returncode != 0]
            if failed_identity:
                checks.append(
                    Check(
                        "identity_runs_succeed",
                        False,
                        "; ".join(
                            f"shard {r.partition}: {r.output_tail[-600:]}" for r in failed_identity
                        ),
                    )
                )
            leads.stop()
            checks.append(
                Check(
                    "our_statements_keep_last_modified_in_bound",
                    leads.ours_max_s <= MAX_LEAD_S + 0.1,
                    f"our flowsheet statements alone put Last-Modified at most"
                    f" {leads.ours_max_s:.2f} s ahead (bound {MAX_LEAD_S:g} s); the station's"
                    f" watermark, with this compressed day's {scenario.rate:g} plays/s of DJ"
                    f" inserts, at most {leads.station_max_s:.2f} s",
                )
            )
            figures.update(
                watermark_lead_max_s=round(leads.station_max_s, 2),
                our_watermark_lead_max_s=round(leads.ours_max_s, 2),
                writer_write_errors=len(writer.write_errors),
                kills=list(run.killed),
                notes=list(run.notes),
                listener_errors=len(subscriber.errors),
                sensor_ticks=list(harness.dagster.sensor_ticks) if harness.dagster else [],
                windows=[
                    (w.fault, round(w.started, 3), round(w.ended, 3) if w.ended else None)
                    for w in (harness.emulator.windows if harness.emulator else [])
                ],
            )
            return ScenarioResult(
                scenario, checks, figures, report, time.monotonic() - began, list(harness.events)
            )
        finally:
            leads.stop()
            writer.stop()
            subscriber.stop()
            if run.identity_thread is not None:
                run.identity_thread.join(120)
