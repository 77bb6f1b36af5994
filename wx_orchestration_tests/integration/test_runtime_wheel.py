"""The runtime wheel: what the image installs. It carries the code location, the sidecar and
`wx migrate`, and leaves the dev stack (embedded servers, emulator, demo data) out."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import wx_orchestration, wx_orchestration.definitions, wx_orchestration.sidecar.runtime
assert wx_orchestration.__file__.startswith({target!r}), wx_orchestration.__file__
try:
    import wx_orchestration.devstack
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the dev stack is in the runtime wheel")
from wx_orchestration.cli import main
raise SystemExit(main(["up"]))
"""


@pytest.mark.timeout(600)
def test_runtime_wheel_has_no_dev_stack_and_says_so(tmp_path: Path) -> None:
    # Built from a clean copy: setuptools reuses a checkout's build/ directory, whose leftovers
    # would end up in the wheel.
    source = tmp_path / "source"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git",
            ".venv",
            ".wx",
            "build",
            "*.egg-info",
            "__pycache__",
            "test-artifacts",
            ".*_cache",
        ),
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = tmp_path.glob("wx_orchestration-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "wx_orchestration/definitions.py" in names
    assert "wx_orchestration/cli.py" in names
    assert "wx_orchestration/sidecar/static/now_playing.html" in names
    assert not [n for n in names if "/devstack/" in n]

    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    # -S: no .pth files, so the checkout's editable install cannot stand in for the wheel; the
    # dependencies come from this environment's site-packages.
    site = sysconfig.get_paths()["purelib"]
    probe = subprocess.run(
        [sys.executable, "-S", "-c", PROBE.format(target=str(target))],
        env={"PYTHONPATH": f"{target}:{site}", "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.returncode == 2, probe.stdout + probe.stderr
    assert "the dev stack is not part of this install" in probe.stderr
