"""Live-feed role: flowsheet events → stream `wx:live` → Server-Sent Events (DESIGN.md §4).

Two halves, either of which can run on any number of sidecars: the projector (`projector.py`)
turns the flowsheet events of `wx:cdc` into frames on `wx:live`; the HTTP side reads `wx:live`
once per process and fans it out to every connection (`fanout.py`), which `/events/stream`
opens (`http.py`). `role.py` wires both into the sidecar.
"""

from wx_orchestration.sidecar.live.role import LiveRole, build

__all__ = ["LiveRole", "build"]
