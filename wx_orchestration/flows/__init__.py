"""I/O orchestration shared by the sidecar and Dagster: no Dagster imports here."""
