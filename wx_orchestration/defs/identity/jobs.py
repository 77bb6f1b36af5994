from __future__ import annotations

import dagster as dg

from wx_orchestration.defs.identity.assets import library_identity
from wx_orchestration.defs.identity.partitions import LIBRARY_SHARDS

library_identity_refresh_job = dg.define_asset_job(
    "library_identity_refresh_job",
    selection=dg.AssetSelection.assets(library_identity),
    partitions_def=LIBRARY_SHARDS,
    description="Refresh library identity for one shard (launch per partition, or backfill all).",
)
