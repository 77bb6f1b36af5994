-- What XINFO STREAM `entries-added` of `wx:cdc` was at least when the bridge saved its
-- watermark. Kept next to the watermark so that a bridge starting after Redis came back from an
-- older snapshot (or was flushed and refilled) still sees that entries were lost; in memory the
-- expectation died with the previous process. NULL: saved by a bridge that did not track it.
ALTER TABLE wx_orchestration.cdc_watermark
    ADD COLUMN stream_entries_added bigint;
