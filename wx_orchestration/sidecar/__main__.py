"""`wx-sidecar` / `python -m wx_orchestration.sidecar`: run the chosen roles until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from dataclasses import fields

from wx_orchestration.settings import Settings, SettingsError
from wx_orchestration.sidecar.http import PortUnavailable
from wx_orchestration.sidecar.roles import ROLE_MODULES, SidecarConfig, UnknownRole, parse_roles
from wx_orchestration.sidecar.runtime import Sidecar

log = logging.getLogger("wx_orchestration.sidecar")


def _parser(roles: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wx-sidecar",
        description="CDC bridge, stream consumers and health endpoints for wx_orchestration. "
        "Connections come from DATABASE_URL, REDIS_URL, WXYC_SCHEMA_NAME; HTTP binds "
        "WX_SIDECAR_HOST:WX_SIDECAR_PORT.",
    )
    parser.add_argument(
        "--roles",
        default=roles,
        help=f"comma-separated roles among {','.join(ROLE_MODULES)} (default: all)",
    )
    parser.add_argument(
        "--instance",
        default=f"{socket.gethostname()}-{os.getpid()}",
        help="name of this process in consumer groups and its heartbeat",
    )
    defaults = SidecarConfig()
    for field in fields(SidecarConfig):
        default = getattr(defaults, field.name)
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(default),
            default=default,
            help=f"(default {default})",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"wx-sidecar: {err}", file=sys.stderr)
        return 2
    args = _parser(settings.sidecar.roles).parse_args(argv)
    logging.basicConfig(
        level=settings.sidecar.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = SidecarConfig(**{f.name: getattr(args, f.name) for f in fields(SidecarConfig)})
    try:
        roles = parse_roles(args.roles)
        # Only the fast path calls LML, and holds its entries while it does.
        lml = ("LIBRARY_METADATA_URL",) if "enrich" in roles else ()
        settings.require("DATABASE_URL", "REDIS_URL", *lml)
        if lml:
            settings.check_timing(config.claim_idle_ms / 1000)
    except SettingsError as err:
        if config.claim_idle_ms >= SidecarConfig.claim_idle_ms or not lml:
            print(f"wx-sidecar: {err}", file=sys.stderr)
            return 2
        # A --claim-idle-ms below production's is a test harness's choice, made knowingly.
        log.warning("--claim-idle-ms: %s", err)
    except UnknownRole as err:
        print(f"wx-sidecar: {err}", file=sys.stderr)
        return 2
    sidecar = Sidecar(settings, config, roles, args.instance)
    try:
        return 0 if sidecar.run_until_signalled() else 1
    except PortUnavailable as err:
        print(f"wx-sidecar: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
