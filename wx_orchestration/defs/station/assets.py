"""What the station owns and we read: its tables and its lookup service, as external assets.

They put where the data comes from into the lineage graph (flowsheet → wx_cdc_stream →
flowsheet_enrichment, library → library_identity, LML beside both); Dagster never
materializes them.
"""

from __future__ import annotations

import dagster as dg

FLOWSHEET_KEY = dg.AssetKey("flowsheet")
LIBRARY_KEY = dg.AssetKey("library")
LML_KEY = dg.AssetKey("lml")

flowsheet = dg.AssetSpec(
    FLOWSHEET_KEY,
    group_name="station",
    kinds={"postgres"},
    description="The station's live playlist (`flowsheet`): its apps insert plays; we claim, "
    "enrich and finalize track rows in place (DESIGN.md §2).",
)

library = dg.AssetSpec(
    LIBRARY_KEY,
    group_name="station",
    kinds={"postgres"},
    description="The station's record library (`library`): rows whose identity "
    "library_identity keeps resolved through LML.",
)

lml = dg.AssetSpec(
    LML_KEY,
    group_name="station",
    description="The station's lookup service (LIBRARY_METADATA_URL): `/api/v1/lookup/bulk` for "
    "plays, `bulk-resolve-libraries` for library identity; its budget is `lml_budget`.",
    metadata={"env": "LIBRARY_METADATA_URL"},
)

STATION_ASSETS = [flowsheet, library, lml]
