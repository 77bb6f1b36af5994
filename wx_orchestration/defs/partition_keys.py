"""Refuse a run whose partition key is not one of its asset's, before it does any work.

A run launched with a hand-written tag (`dagster/partition=3` for shard "03") would otherwise
do the work and then fail when Dagster records the materialization of a partition that does not
exist.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

LISTED_KEYS = 20
_KEY_TAGS = (
    "dagster/partition",
    "dagster/asset_partition_range_start",
    "dagster/asset_partition_range_end",
)


def require_known_partition(context: dg.AssetExecutionContext) -> None:
    partitions = context.assets_def.partitions_def
    if partitions is None:
        return
    valid = partitions.get_partition_keys()
    known = set(valid)
    tags = context.run.tags
    asked = [tags[name] for name in _KEY_TAGS if name in tags]
    unknown = [key for key in asked if key not in known]
    if unknown:
        raise dg.Failure(
            description=f"partition key {unknown[0]!r} is not a partition of "
            f"{context.asset_key.to_user_string()}; valid keys: {describe_keys(valid)}",
            allow_retries=False,
        )


def describe_keys(keys: Sequence[str]) -> str:
    if len(keys) <= LISTED_KEYS:
        return ", ".join(keys)
    return f"{keys[0]} … {keys[-1]} ({len(keys)} keys)"
