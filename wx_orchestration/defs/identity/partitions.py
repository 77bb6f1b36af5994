"""Library shards: `library.id % 16`, keys "00".."15"."""

from __future__ import annotations

import dagster as dg

from wx_orchestration.db.identity import SHARD_COUNT

LIBRARY_SHARDS = dg.StaticPartitionsDefinition([f"{shard:02d}" for shard in range(SHARD_COUNT)])
