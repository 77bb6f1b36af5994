"""`wx up` as a user runs it: a real supervisor process, real children, real signals."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from wx_orchestration.devstack.processes import free_port, wait_until
from wx_orchestration_tests.chromium import ARTIFACTS, chromium

pytestmark = pytest.mark.system

START_TIMEOUT = 240
LOCATION_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename
      ... on PythonError { message }
      ... on RepositoryLocation { repositories { jobs { name } } } } } } } }
"""


LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } }
}
"""
TERMINAL_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def processes_of(state_dir: Path) -> list[int]:
    """Every process carrying this stack's WX_STATE_DIR (children inherit the environment)."""
    marker = f"WX_STATE_DIR={state_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def lineage_screenshots(ui: str) -> None:
    """Each asset's upstream lineage as a user sees it in the UI: flowsheet → wx_cdc_stream →
    flowsheet_enrichment (with lml), library → library_identity (with lml)."""
    ARTIFACTS.mkdir(exist_ok=True)
    upstream = {
        "flowsheet_enrichment": ("flowsheet", "wx_cdc_stream", "lml"),
        "library_identity": ("library", "lml"),
    }
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        for asset, parents in upstream.items():
            page.goto(
                f"{ui}/assets/{asset}?view=lineage&lineageScope=upstream&lineageDepth=3",
                timeout=120_000,
            )
            for name in parents:
                page.get_by_text(name, exact=True).last.wait_for(timeout=120_000)
            page.screenshot(path=str(ARTIFACTS / f"lineage_{asset}.png"))


class Stack:
    def __init__(self, state_dir: Path, ui_port: int) -> None:
        self.state_dir = state_dir
        self.ui_port = ui_port
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DATABASE_URL", "REDIS_URL", "LIBRARY_METADATA_URL", "DAGSTER_HOME"}
        }
        self.env.update(WX_STATE_DIR=str(state_dir), WX_SIDECAR_PORT=str(free_port()))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state_dir / "supervisor.out"

    def up(self) -> None:
        wx = Path(sys.executable).parent / "wx"
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(wx), "up", "--ui-port", str(self.ui_port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = self.proc
        wait_until(
            lambda: b"is up" in self.log.read_bytes()[offset:] or proc.poll() is not None,
            timeout=START_TIMEOUT,
            what="wx up",
        )
        assert proc.poll() is None, self.log.read_text()

    def graphql(self) -> dict:
        response = httpx.post(
            f"http://127.0.0.1:{self.ui_port}/graphql", json={"query": LOCATION_QUERY}, timeout=30
        )
        response.raise_for_status()
        return response.json()

    def launch_backfill(self, asset: str, partitions: list[str]) -> str:
        response = self._post(
            LAUNCH_BACKFILL,
            {"params": {"assetSelection": [{"path": [asset]}], "partitionNames": partitions}},
        )
        result = response["data"]["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", result
        return result["backfillId"]

    def backfill_status(self, backfill_id: str) -> str:
        result = self._post(BACKFILL_STATUS, {"id": backfill_id})
        return result["data"]["partitionBackfillOrError"]["status"]

    def identity_shards_written(self) -> set[int]:
        info = json.loads((self.state_dir / "stack.json").read_text())
        # stack.json holds the redacted URL; the embedded server has no password to redact.
        with psycopg.connect(info["database_url"]) as conn:
            rows = conn.execute(
                "SELECT DISTINCT library_id % 16 FROM wxyc_schema.library_identity"
            ).fetchall()
        return {row[0] for row in rows}

    def _post(self, query: str, variables: dict) -> dict:
        response = httpx.post(
            f"http://127.0.0.1:{self.ui_port}/graphql",
            json={"query": query, "variables": variables},
            timeout=30,
        )
        response.raise_for_status()
        return response.json()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(120)

    def wait_all_gone(self) -> None:
        wait_until(
            lambda: not processes_of(self.state_dir),
            timeout=60,
            what=f"every process of the stack to exit (left: {processes_of(self.state_dir)})",
        )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    tmp_path.chmod(0o755)
    stack = Stack(tmp_path / "state", free_port())
    stack.state_dir.mkdir()
    yield stack
    for pid in processes_of(stack.state_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# Two starts of the whole stack, a backfill and a CLI run: more than the suite's 300 s on a
# loaded two-core machine.
@pytest.mark.timeout(900)
def test_up_serves_the_location_and_survives_kill_9_and_ctrl_c(stack: Stack) -> None:
    stack.up()
    (entry,) = stack.graphql()["data"]["workspaceOrError"]["locationEntries"]
    assert entry["name"] == "wx_orchestration"
    assert entry["loadStatus"] == "LOADED"
    location = entry["locationOrLoadError"]
    assert location["__typename"] == "RepositoryLocation", location
    jobs = {job["name"] for repo in location["repositories"] for job in repo["jobs"]}
    assert "library_identity_refresh_job" in jobs
    status = subprocess.run(
        [str(Path(sys.executable).parent / "wx"), "status"],
        env=stack.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert status.returncode == 0
    assert "dagster-webserver" in status.stdout
    assert "sidecar" in status.stdout
    # The README's shell/CI example, as written, from outside the checkout.
    bin_dir = Path(sys.executable).parent
    example = subprocess.run(
        [
            "sh",
            "-c",
            f'eval "$({bin_dir}/wx env)" && '
            f"{bin_dir}/dagster job execute -m wx_orchestration.definitions -j stale_sweep_job",
        ],
        env=stack.env,
        cwd=stack.state_dir.parent,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert example.returncode == 0, example.stderr[-3000:]
    assert "RUN_SUCCESS" in example.stdout + example.stderr
    lineage_screenshots(f"http://127.0.0.1:{stack.ui_port}")
    sidecar = f"http://127.0.0.1:{stack.env['WX_SIDECAR_PORT']}/healthz"
    wait_until(lambda: _answers(sidecar), timeout=30, what="the sidecar's /healthz")

    # A backfill over library shards, as the UI launches it, is run by the daemon.
    backfill_id = stack.launch_backfill("library_identity", ["00", "01"])
    wait_until(
        lambda: stack.backfill_status(backfill_id) in TERMINAL_BACKFILL,
        timeout=START_TIMEOUT,
        what="the library_identity backfill",
    )
    assert stack.backfill_status(backfill_id) in {"COMPLETED", "COMPLETED_SUCCESS"}
    shards = stack.identity_shards_written()
    assert shards == {0, 1}, shards

    # A supervisor killed outright takes its children with it...
    stack.signal(signal.SIGKILL)
    stack.wait_all_gone()
    # ...and the next start recovers from the stale pid files.
    stack.up()
    assert stack.graphql()["data"]["workspaceOrError"]["locationEntries"][0]["loadStatus"] == (
        "LOADED"
    )
    # Ctrl-C stops everything.
    stack.signal(signal.SIGINT)
    assert stack.proc is not None
    assert stack.proc.returncode == 0, stack.log.read_text()[-3000:]
    stack.wait_all_gone()
