"""Run the benchmarks: `python -m bench` (all) or `python -m bench identity_refresh ...`;
arguments after the names (from the first starting with `-`) go to each benchmark named.

Each benchmark measures its naive baseline in the same run and prints the ratio. Servers are
embedded (PostgreSQL with durable commits, Valkey) unless DATABASE_URL / REDIS_URL are set.
Record the figures in bench/RESULTS.md.
"""

from __future__ import annotations

import pkgutil
import runpy
import sys
from pathlib import Path

_NOT_BENCHMARKS = {"common", "__main__"}


def available() -> list[str]:
    here = str(Path(__file__).parent)
    return sorted(m.name for m in pkgutil.iter_modules([here]) if m.name not in _NOT_BENCHMARKS)


def main(argv: list[str]) -> int:
    split = next((n for n, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    names, extra = argv[:split] or available(), argv[split:]
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(available())}")
        return 2
    for name in names:
        print(f"=== bench.{name}", flush=True)
        saved = sys.argv
        sys.argv = [f"bench.{name}", *extra]
        try:
            runpy.run_module(f"bench.{name}", run_name="__main__")
        finally:
            sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
