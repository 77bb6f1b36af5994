"""The `wx` command: run, migrate, seed, stop and inspect the local stack.

`wx migrate` is all a runtime install (the image) needs; the other commands drive the dev
stack (`wx_orchestration.devstack`), which a checkout has and the runtime wheel leaves out.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from wx_orchestration.db.migrations import MigrationError
from wx_orchestration.settings import Settings, SettingsError, redact_url


def _database_url(settings: Settings) -> str:
    """DATABASE_URL, else the database of a running `wx up`."""
    from wx_orchestration.devstack.stack import read_stack, state_dir

    if settings.database.url:
        return settings.database.url
    raise SettingsError(
        "DATABASE_URL is not set"
        + (
            ' (a `wx up` is running: eval "$(wx env)" exports it)'
            if read_stack(state_dir())
            else ""
        )
    )


def cmd_up(args: argparse.Namespace) -> int:
    from wx_orchestration.devstack.stack import UpOptions, run_up

    options = UpOptions(
        ui_host=args.ui_host,
        ui_port=args.ui_port,
        demo_data=not args.no_demo_data,
        with_sidecar=not args.no_sidecar,
    )
    return run_up(options)


def cmd_migrate(args: argparse.Namespace) -> int:
    from wx_orchestration.db.migrations import apply_migrations

    settings = Settings.from_env()
    url = _database_url(settings)
    applied = apply_migrations(
        url,
        with_station_schema=args.with_station_schema,
        station_schema=settings.database.station_schema,
    )
    print(f"{redact_url(url)}: {len(applied)} migration(s) applied")
    for name in applied:
        print(f"  {name}")
    return 0


def cmd_demo_data(args: argparse.Namespace) -> int:
    from wx_orchestration.devstack.demo_data import load_demo_data

    settings = Settings.from_env()
    counts = load_demo_data(
        _database_url(settings), station_schema=settings.database.station_schema, force=args.force
    )
    print(f"demo data: {counts}")
    return 0


def cmd_down(_args: argparse.Namespace) -> int:
    from wx_orchestration.devstack.stack import run_down

    stopped = run_down()
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return 0


def cmd_status(_args: argparse.Namespace) -> int:
    from wx_orchestration.devstack.processes import running_names
    from wx_orchestration.devstack.stack import read_stack, state_dir

    root = state_dir()
    info = read_stack(root)
    running = running_names(root / "run")
    if not running:
        print("wx up is not running")
    for name, pid in running.items():
        print(f"{name:18} running (pid {pid})")
    for key, value in info.items():
        print(f"{key:18} {value}")
    return 0 if running else 3


def cmd_env(_args: argparse.Namespace) -> int:
    from wx_orchestration.devstack.processes import running_names
    from wx_orchestration.devstack.stack import env_file, state_dir

    root = state_dir()
    if not running_names(root / "run"):
        print("wx up is not running: start it with ./run up", file=sys.stderr)
        return 3
    try:
        print(env_file(root).read_text(), end="")
    except OSError:
        print("wx up is still starting: try again when `wx status` lists it", file=sys.stderr)
        return 3
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wx", description="wx_orchestration: run and manage the local stack."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up",
        help="run the whole system on this machine",
        description=(
            "Start Postgres and Valkey (embedded, unless DATABASE_URL / REDIS_URL are set), "
            "apply migrations, load demo data, start the LML emulator (unless "
            "LIBRARY_METADATA_URL is set), the Dagster webserver and daemon and the sidecar. "
            "Ctrl-C or SIGTERM stops everything. State lives in .wx/ (WX_STATE_DIR)."
        ),
    )
    up.add_argument("--ui-host", default="127.0.0.1", help="Dagster UI address")
    up.add_argument("--ui-port", type=int, default=3000, help="Dagster UI port (default 3000)")
    up.add_argument("--no-demo-data", action="store_true", help="do not load demo data")
    up.add_argument("--no-sidecar", action="store_true", help="do not start the sidecar")
    up.set_defaults(func=cmd_up)

    migrate = sub.add_parser(
        "migrate",
        help="apply migrations to DATABASE_URL",
        description=(
            "Apply wx_orchestration's own migrations (schema wx_orchestration) to DATABASE_URL. "
            "The station schema is only created with --with-station-schema (dev and tests; "
            "never against production)."
        ),
    )
    migrate.add_argument(
        "--with-station-schema",
        action="store_true",
        help="also create the station tables mirror in WXYC_SCHEMA_NAME (dev/test only)",
    )
    migrate.set_defaults(func=cmd_migrate)

    demo = sub.add_parser(
        "demo-data",
        help="load the demo station into DATABASE_URL",
        description="Load a small demo station (library, shows, a day of flowsheet). "
        "Skipped when the library already has rows, unless --force.",
    )
    demo.add_argument("--force", action="store_true", help="load even if data exists")
    demo.set_defaults(func=cmd_demo_data)

    down = sub.add_parser(
        "down",
        help="stop a running `wx up` and anything it left behind",
        description="Stop the `wx up` supervisor and every child recorded in .wx/run.",
    )
    down.set_defaults(func=cmd_down)

    status = sub.add_parser(
        "status",
        help="show what `wx up` is running and where",
        description="List running children and addresses. Exit code 3 when nothing runs.",
    )
    status.set_defaults(func=cmd_status)

    env = sub.add_parser(
        "env",
        help="print the exports that reach the running stack",
        description=(
            'For a shell or CI step beside `wx up`: eval "$(wx env)" sets DATABASE_URL, '
            "REDIS_URL, LIBRARY_METADATA_URL, WXYC_SCHEMA_NAME, DAGSTER_HOME and DAGSTER_PG_URL, "
            "after which `dagster job execute -m wx_orchestration.definitions -j <job>` runs "
            "against it. Exit code 3 when nothing runs."
        ),
    )
    env.set_defaults(func=cmd_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"wx: {exc}", file=sys.stderr)
        return 2
    except MigrationError as exc:
        print(f"wx: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("wx_orchestration.devstack"):
            raise
        print(
            f"wx {args.command}: the dev stack is not part of this install (the runtime wheel "
            "has `wx migrate` only); run it from a checkout: ./run up",
            file=sys.stderr,
        )
        return 2
    except BrokenPipeError:
        # `wx status | head`: the reader left. Point stdout at /dev/null so that the flush at
        # exit does not fail a second time with a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
