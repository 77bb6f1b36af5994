-- Failures that were the row's own (LML answered the call but not this item, or a claim
-- expired because its worker died) are counted apart from all retries: only these count
-- towards parking, so an LML outage of any length parks nothing. `attempts` keeps counting
-- every retry, for the backoff.
ALTER TABLE wx_orchestration.enrichment_attempts
    ADD COLUMN faults integer NOT NULL DEFAULT 0;
