"""The sidecar's live stream as an external asset: Dagster observes it, never materializes it."""

from __future__ import annotations

import dagster as dg

from wx_orchestration.contracts.cdc import CDC_STREAM
from wx_orchestration.defs.station.assets import FLOWSHEET_KEY

WX_CDC_STREAM_KEY = dg.AssetKey("wx_cdc_stream")

wx_cdc_stream = dg.AssetSpec(
    WX_CDC_STREAM_KEY,
    group_name="sidecar",
    description=(
        f"Redis stream `{CDC_STREAM}`: every flowsheet change, bridged from Postgres NOTIFY by the "
        "sidecar (with catch-up from a saved watermark) and read by the consumer groups "
        "`eventlog` and `enrichment`. Observed once a minute by `sidecar_health_sensor`."
    ),
    kinds={"redis"},
    deps=[FLOWSHEET_KEY],
    metadata={"stream": CDC_STREAM},
)

LML_BUDGET_KEY = dg.AssetKey("lml_budget")

lml_budget = dg.AssetSpec(
    LML_BUDGET_KEY,
    group_name="sidecar",
    description=(
        "The LML budget every process shares (kept in Redis): rate and concurrency per endpoint "
        "family, the live reserve, a 429 pause and the shared breaker. Observed once a minute "
        "by `sidecar_health_sensor`."
    ),
    kinds={"redis"},
)
