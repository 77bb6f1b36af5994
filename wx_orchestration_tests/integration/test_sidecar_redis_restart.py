"""Redis restarted empty: stream and group come back and the bridge resumes from its watermark."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from wx_orchestration.contracts.cdc import CDC_STREAM, EVENTLOG_GROUP
from wx_orchestration.devstack.servers import EmbeddedValkey
from wx_orchestration_tests.integration.sidecar_support import (
    connect,
    current_keys,
    insert_tracks,
    logged_keys,
    poll,
    running_sidecar,
    wait_listening,
)


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_restarted_empty(station_db: str, valkey: EmbeddedValkey, tmp_path: Path) -> None:
    url = valkey.url
    with (
        running_sidecar(station_db, url, ("bridge", "eventlog")) as sidecar,
        connect(station_db) as conn,
    ):
        wait_listening(sidecar)
        insert_tracks(conn, 5)
        poll(lambda: len(logged_keys(conn)) == 5, what="rows logged before the restart")

        valkey.stop()
        during_outage = insert_tracks(conn, 10)
        valkey.start()  # same port, nothing kept: stream and groups are gone
        after = insert_tracks(conn, 5)

        expected = set(current_keys(conn).values())
        poll(lambda: expected <= set(logged_keys(conn)), timeout=20, what="every row logged")
        assert len(logged_keys(conn)) == 20
        client = redis.Redis.from_url(url)
        groups = {g["name"].decode() for g in client.xinfo_groups(CDC_STREAM)}  # type: ignore[union-attr]
        assert EVENTLOG_GROUP in groups
        assert set(during_outage) | set(after) <= set(logged_keys(conn).values())
