"""Pytest fixtures for the LML emulator and client (registered as a plugin in the root conftest).

One emulator serves the whole session; `lml_emulator` hands it to each test with its faults back
at their start values and an empty request log, so tests never see each other's traffic or faults.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from wx_orchestration.clients.lml import LmlClient
from wx_orchestration.devstack.lml_emulator import EmulatorHandle, start_in_thread


@pytest.fixture(scope="session")
def lml_emulator_server() -> Iterator[EmulatorHandle]:
    handle = start_in_thread(seed=1234)
    yield handle
    handle.stop()


@pytest.fixture
def lml_emulator(lml_emulator_server: EmulatorHandle) -> EmulatorHandle:
    lml_emulator_server.reset()
    return lml_emulator_server


@pytest.fixture
def lml_client(lml_emulator: EmulatorHandle) -> Iterator[LmlClient]:
    """A client for the emulator that does not retry, so tests see every fault they inject."""
    client = LmlClient(
        lml_emulator.url, connect_timeout=2.0, read_timeout=5.0, total_timeout=10.0, max_retries=0
    )
    yield client
    client.close()
