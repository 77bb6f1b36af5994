from __future__ import annotations

import dagster as dg

from wx_orchestration.defs.identity.assets import library_identity
from wx_orchestration.defs.observability.sentry import asset_job_with_sentry

# Partitioned by library shard, inferred from the asset.
library_identity_refresh_job = asset_job_with_sentry(
    "library_identity_refresh_job",
    selection=dg.AssetSelection.assets(library_identity),
    description="Refresh library identity for one shard (launch per partition, or backfill all).",
)
