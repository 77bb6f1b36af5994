"""A role for the supervision tests: fails at once while `FAILING` is set, else works until
stopped. Registered in `ROLE_MODULES` by the tests that use it (`monkeypatch.setitem`).
"""

from __future__ import annotations

import threading

from wx_orchestration.sidecar.roles import SidecarContext

FAILING = threading.Event()


class FlakyRole:
    name = "flaky"

    def __init__(self) -> None:
        self.runs = 0

    def run(self, stop: threading.Event) -> None:
        self.runs += 1
        if FAILING.is_set():
            try:
                raise ConnectionResetError("the peer went away")
            except ConnectionResetError as err:
                raise RuntimeError(f"run {self.runs} failed") from err
        stop.wait()

    def readiness(self) -> tuple[bool, str]:
        return True, f"run {self.runs}"


def build(_ctx: SidecarContext) -> FlakyRole:
    return FlakyRole()
