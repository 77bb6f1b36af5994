"""Child processes that die with their starter, with pid files a later start can clean up."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("wx_orchestration.devstack")

_LIFELINE_MODULE = "wx_orchestration.devstack.lifeline"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str
) -> None:
    """Poll `predicate` until it is true; raise TimeoutError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class ManagedProcess:
    """A command run under the lifeline wrapper: it stops when `stop()` is called or we die."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    pid_file: Path | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.popen.stdin is not None:
            self.popen.stdin.close()
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_process(
    name: str,
    command: list[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    stop_signal: str = "TERM",
    grace: float = 10.0,
    user: str | None = None,
    pid_dir: Path | None = None,
) -> ManagedProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = [sys.executable, "-m", _LIFELINE_MODULE, "--stop-signal", stop_signal]
    wrapper += ["--grace", str(grace)]
    if user:
        wrapper += ["--user", user]
    with log_path.open("ab") as log_file:
        popen = subprocess.Popen(
            [*wrapper, "--", *command],
            # The write end stays with us, unwritten: our exit is the wrapper's EOF.
            stdin=subprocess.PIPE,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )
    pid_file = None
    if pid_dir is not None:
        pid_dir.mkdir(parents=True, exist_ok=True)
        pid_file = pid_dir / f"{name}.json"
        pid_file.write_text(json.dumps({"pid": popen.pid, "command": command[:3]}))
    return ManagedProcess(name=name, popen=popen, log_path=log_path, pid_file=pid_file)


def _is_our_wrapper(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return _LIFELINE_MODULE.encode() in cmdline


def reap_stale(pid_dir: Path, timeout: float = 20.0) -> list[str]:
    """Stop wrappers a killed supervisor left behind; return the names of those found alive."""
    found: list[str] = []
    if not pid_dir.is_dir():
        return found
    for pid_file in sorted(pid_dir.glob("*.json")):
        try:
            pid = int(json.loads(pid_file.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            pid_file.unlink(missing_ok=True)
            continue
        if _is_our_wrapper(pid):
            found.append(pid_file.stem)
            os.kill(pid, signal.SIGTERM)
            wait_until(
                lambda pid=pid: not _is_our_wrapper(pid),
                timeout=timeout,
                what=f"stale {pid_file.stem} (pid {pid}) to stop",
            )
        pid_file.unlink(missing_ok=True)
    return found


def running_names(pid_dir: Path) -> dict[str, int]:
    """Names and pids of wrappers recorded in `pid_dir` that are still alive."""
    alive: dict[str, int] = {}
    if not pid_dir.is_dir():
        return alive
    for pid_file in sorted(pid_dir.glob("*.json")):
        try:
            pid = int(json.loads(pid_file.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            continue
        if _is_our_wrapper(pid):
            alive[pid_file.stem] = pid
    return alive
