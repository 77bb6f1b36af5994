"""Flowsheet days: one partition per broadcast day by `add_time` in the station's time zone."""

from __future__ import annotations

import dagster as dg

STATION_TIMEZONE = "America/New_York"

# end_offset=1 makes today a partition, so a backlog run can finish the day still on the air.
FLOWSHEET_DAYS = dg.DailyPartitionsDefinition(
    start_date="2015-01-01", timezone=STATION_TIMEZONE, end_offset=1
)
