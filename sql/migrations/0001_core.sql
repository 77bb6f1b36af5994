-- Our own state (DESIGN.md §5). Everything lives in schema wx_orchestration, created by the
-- runner; the station's tables are never referenced from here, since production owns them.

-- Where each CDC bridge resumes its catch-up: the last (updated_at, flowsheet_id) it forwarded.
CREATE TABLE wx_orchestration.cdc_watermark (
    name         text PRIMARY KEY,
    updated_at   timestamptz,
    flowsheet_id integer,
    saved_at     timestamptz NOT NULL DEFAULT now()
);

-- Poison stream entries and notifications. payload is text, not jsonb, so that an entry
-- which cannot be decoded is still kept verbatim.
CREATE TABLE wx_orchestration.dead_letters (
    id         bigserial PRIMARY KEY,
    source     text,
    entry_id   text,
    payload    text,
    reason     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dead_letters_created_at_idx ON wx_orchestration.dead_letters (created_at);

-- One row per flowsheet row version. event_key is built from (flowsheet_id, updated_at,
-- metadata_status), so the same version arriving live and again by catch-up or redelivery is
-- written once.
CREATE TABLE wx_orchestration.flowsheet_events (
    event_key       text PRIMARY KEY,
    flowsheet_id    integer NOT NULL,
    action          text,
    metadata_status text,
    updated_at      timestamptz,
    cdc_timestamp   timestamptz,
    bridged_at      timestamptz,
    logged_at       timestamptz NOT NULL DEFAULT now(),
    catchup         boolean NOT NULL DEFAULT false
);

CREATE INDEX flowsheet_events_flowsheet_id_idx ON wx_orchestration.flowsheet_events (flowsheet_id);
CREATE INDEX flowsheet_events_logged_at_idx ON wx_orchestration.flowsheet_events (logged_at);

-- Retry bookkeeping for enrichment, kept here because the station's flowsheet is not ours to
-- alter. A parked row is left alone until a person looks at parked_reason.
CREATE TABLE wx_orchestration.enrichment_attempts (
    flowsheet_id    integer PRIMARY KEY,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    last_attempt_at timestamptz,
    next_attempt_at timestamptz,
    parked_reason   text
);

-- Backoff scans look for rows whose next attempt is due.
CREATE INDEX enrichment_attempts_next_attempt_at_idx
    ON wx_orchestration.enrichment_attempts (next_attempt_at);
