"""Run one command so that it dies with whoever started it.

`PR_SET_PDEATHSIG` is not delivered on these machines (checked: a child of a SIGKILLed parent
kept running), so the supervisor hands each child a pipe instead: it holds the write end and
never writes. When the supervisor exits for any reason, including SIGKILL, the kernel closes the
pipe, this wrapper reads EOF and stops the command's whole process group.

Usage: python -m wx_orchestration.devstack.lifeline --stop-signal INT --grace 10 [--user nobody]
       -- COMMAND [ARGS...]   (stdin must be the lifeline pipe)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import selectors
import signal
import subprocess
import sys
import time


def _drop_privileges(user: str) -> None:
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def _child_setup(user: str | None) -> None:
    # Children inherit ignored signals from shells that started us in the background;
    # restore the defaults so the stop signal we send is acted on.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    if user:
        _drop_privileges(user)


def _stop_group(pgid: int, stop_signal: int, grace: float, proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(pgid, stop_signal)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    # The leader may be gone while helpers it forked linger: sweep the whole group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wx-lifeline", description=__doc__)
    parser.add_argument("--stop-signal", default="TERM", help="signal name sent to stop (no SIG)")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds before SIGKILL")
    parser.add_argument("--user", default=None, help="run the command as this user")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    stop_signal = int(getattr(signal, f"SIG{args.stop_signal.upper()}"))

    stop_requested = False

    def request_stop(_signum: int, _frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, request_stop)

    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=lambda: _child_setup(args.user),
    )
    pgid = proc.pid
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ)
    while True:
        if proc.poll() is not None:
            return proc.returncode
        if stop_requested:
            break
        if selector.select(timeout=0.2) and not os.read(sys.stdin.fileno(), 1):
            break  # EOF: the supervisor is gone.
    _stop_group(pgid, stop_signal, args.grace, proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
