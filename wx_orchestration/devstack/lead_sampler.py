"""Watching the station's Last-Modified lead while something runs (benchmarks, scenarios)."""

from __future__ import annotations

import threading

import psycopg

from wx_orchestration.db.paced_writes import watermark_leads


class LeadSampler:
    """Samples `watermark_leads` every `every_s` on a connection of its own while the block
    runs; `station_max_s` and `ours_max_s` are the worst seen. A failed sample (the database
    restarting) is skipped."""

    def __init__(self, url: str, schema: str, every_s: float = 0.1) -> None:
        self.url = url
        self.schema = schema
        self.every_s = every_s
        self.station_max_s = 0.0
        self.ours_max_s = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lead-sampler", daemon=True)

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._stop.wait(self.every_s):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.url, autocommit=True, connect_timeout=2)
                station, ours = watermark_leads(conn, self.schema)
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
                continue
            self.station_max_s = max(self.station_max_s, station)
            self.ours_max_s = max(self.ours_max_s, ours)
            self.samples += 1
        if conn is not None:
            conn.close()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Idempotent: the figures stay readable after."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def __enter__(self) -> LeadSampler:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
