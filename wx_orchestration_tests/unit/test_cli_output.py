"""What `./run` and `wx` print is what a person reads: no stray lines, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_run_without_a_command_prints_only_its_usage() -> None:
    result = subprocess.run([str(REPO / "run")], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "set -euo pipefail" not in result.stdout
    assert result.stdout.splitlines()[0].startswith("The two commands")


def test_wx_status_into_a_closed_pipe_ends_without_a_traceback(tmp_path: Path) -> None:
    reader, writer = os.pipe()
    os.close(reader)
    try:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "wx"), "status"],
            stdout=writer,
            stderr=subprocess.PIPE,
            env={**os.environ, "WX_STATE_DIR": str(tmp_path)},
            check=False,
        )
    finally:
        os.close(writer)
    assert b"Traceback" not in result.stderr
    assert result.returncode in (0, 3)
