-- How far a consumer group's own table is known complete: every flowsheet row at or before
-- (updated_at, flowsheet_id) has its current version there. Redis keeps a group's unfinished
-- entries only in the stream, so when `wx:cdc` is lost the bridge replays from the oldest mark.
CREATE TABLE wx_orchestration.cdc_consumer_marks (
    source         text NOT NULL,  -- the bridged table, as the watermark names it
    consumer_group text NOT NULL,
    updated_at     timestamptz NOT NULL,
    flowsheet_id   integer NOT NULL,
    saved_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, consumer_group)
);
