-- Our own share of the station's Last-Modified lead. Production's per-statement trigger moves
-- `flowsheet_watermark` a second for every statement that writes flowsheet; this row is where
-- that watermark would be if only our statements had moved it. Every writer of ours (sidecars,
-- backlog runs, sweeps) reads and moves it under one advisory lock, in the transaction that
-- writes flowsheet, and waits while it is too far ahead (db/paced_writes.py).
CREATE TABLE wx_orchestration.flowsheet_write_pace (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    next_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO wx_orchestration.flowsheet_write_pace DEFAULT VALUES;
