from __future__ import annotations

import dagster as dg

from wx_orchestration.defs.identity.assets import library_identity
from wx_orchestration.defs.observability.sentry import with_sentry

# Partitioned by library shard, inferred from the asset.
library_identity_refresh_job = with_sentry(
    dg.define_asset_job(
        "library_identity_refresh_job",
        selection=dg.AssetSelection.assets(library_identity),
        description="Refresh library identity for one shard (per partition, or backfill all).",
    )
)
