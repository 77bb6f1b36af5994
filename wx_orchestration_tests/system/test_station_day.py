"""A station's day under faults, the whole system as separate processes (issue #9).

`test_short_station_day` runs in every `./run test` (~200 plays, a 5xx burst, the active bridge
killed mid-batch, a breaker-open degraded window; about a minute). The full set — baseline,
each fault on its own, then all of them in one run — is selected with `WX_FULL_SCENARIOS=1`
and writes its report into `bench/RESULTS.md`:

    WX_FULL_SCENARIOS=1 .venv/bin/pytest wx_orchestration_tests/system/test_station_day.py -v

`WX_SCENARIO_PLAYS` (default 2000) and `WX_SCENARIO_RATE` (plays/s, default 20) scale it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wx_orchestration_tests.system.report import record_result
from wx_orchestration_tests.system.scenarios import SHORT, Scenario, run_scenario, scenarios

pytestmark = pytest.mark.system

FULL = os.environ.get("WX_FULL_SCENARIOS", "") not in ("", "0")
FULL_SET = scenarios(
    plays=int(os.environ.get("WX_SCENARIO_PLAYS", "2000")),
    rate=float(os.environ.get("WX_SCENARIO_RATE", "20")),
)


def _run(tmp_path: Path, scenario: Scenario, *, report: bool) -> None:
    result = run_scenario(tmp_path / "stack", scenario)
    print(result.summary())
    if report:
        record_result(result)
    failed = [c for c in result.checks if not c.ok]
    assert not failed, "\n".join(c.line() for c in failed) + "\n\n" + result.summary()


@pytest.mark.timeout(240)
def test_short_station_day(tmp_path: Path) -> None:
    _run(tmp_path, SHORT, report=False)


@pytest.mark.skipif(not FULL, reason="full scenario set: set WX_FULL_SCENARIOS=1")
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", list(FULL_SET))
def test_full_scenario(tmp_path: Path, name: str) -> None:
    _run(tmp_path, FULL_SET[name], report=True)
