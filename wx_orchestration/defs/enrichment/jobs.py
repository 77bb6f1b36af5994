from __future__ import annotations

import dagster as dg

from wx_orchestration.defs.enrichment.assets import flowsheet_enrichment
from wx_orchestration.defs.observability.sentry import with_sentry

# Partitioned by flowsheet day, inferred from the asset; launched by enrichment_backlog_sensor.
enrichment_backlog_job = with_sentry(
    dg.define_asset_job(
        "enrichment_backlog_job",
        selection=dg.AssetSelection.assets(flowsheet_enrichment),
        description="Enrich the pending track rows of one flowsheet day (or a backfilled range).",
    )
)
