-- The station's triggers on flowsheet (DESIGN.md §2), mirrored because they shape both
-- correctness (updated_at is the transaction start time; CDC payload shapes) and speed (the
-- watermark row serializes every flowsheet writer).
--
-- Every function pins `search_path FROM CURRENT`: the runner has set it to the station schema,
-- so the functions find their tables under whatever name that schema was given, no matter what
-- search_path the writer's session uses.

-- now() is the transaction start, so a row committed later can carry an earlier updated_at
-- than one a reader already saw; catch-up scans need an overlap because of this.
CREATE FUNCTION bump_flowsheet_updated_at() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER flowsheet_bump_updated_at
    BEFORE INSERT OR UPDATE ON flowsheet
    FOR EACH ROW EXECUTE FUNCTION bump_flowsheet_updated_at();

-- pg_notify refuses payloads of 8000 bytes or more; beyond this limit the consumer gets a
-- pointer to the row instead and re-reads it.
CREATE FUNCTION cdc_notify() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $$
DECLARE
    max_payload_bytes constant integer := 7800;
    sent_at_ms bigint := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    row_image jsonb;
    payload text;
BEGIN
    BEGIN
        IF TG_OP = 'DELETE' THEN
            row_image := to_jsonb(OLD);
        ELSE
            row_image := to_jsonb(NEW);
        END IF;
        payload := jsonb_build_object(
            'table', TG_TABLE_NAME,
            'schema', TG_TABLE_SCHEMA,
            'action', TG_OP,
            'data', row_image,
            'timestamp', sent_at_ms
        )::text;
        IF octet_length(payload) <= max_payload_bytes THEN
            PERFORM pg_notify('cdc', payload);
        ELSE
            PERFORM pg_notify('cdc_oversized', jsonb_build_object(
                'table', TG_TABLE_NAME,
                'schema', TG_TABLE_SCHEMA,
                'action', TG_OP,
                'primary_key', row_image ->> 'id',
                'payload_bytes', octet_length(payload),
                'timestamp', sent_at_ms,
                'reason', format('payload exceeds %s bytes', max_payload_bytes)
            )::text);
        END IF;
    EXCEPTION WHEN OTHERS THEN
        -- A lost notification is recovered by catch-up; a failed DJ write is not.
        BEGIN
            PERFORM pg_notify('cdc_error', jsonb_build_object(
                'table', TG_TABLE_NAME,
                'schema', TG_TABLE_SCHEMA,
                'action', TG_OP,
                'sqlstate', SQLSTATE,
                'sqlerrm', SQLERRM,
                'timestamp', sent_at_ms,
                'reason', 'building or sending the cdc payload failed'
            )::text);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'cdc_notify on %.% failed: %', TG_TABLE_SCHEMA, TG_TABLE_NAME, SQLERRM;
        END;
    END;
    RETURN NULL;
END;
$$;

CREATE TRIGGER cdc_flowsheet
    AFTER INSERT OR UPDATE OR DELETE ON flowsheet
    FOR EACH ROW EXECUTE FUNCTION cdc_notify();

CREATE TRIGGER cdc_library
    AFTER INSERT OR UPDATE OR DELETE ON library
    FOR EACH ROW EXECUTE FUNCTION cdc_notify();

CREATE TRIGGER cdc_artists
    AFTER INSERT OR UPDATE OR DELETE ON artists
    FOR EACH ROW EXECUTE FUNCTION cdc_notify();

CREATE TRIGGER cdc_shows
    AFTER INSERT OR UPDATE OR DELETE ON shows
    FOR EACH ROW EXECUTE FUNCTION cdc_notify();

-- The row lock taken here is held until commit, so every transaction that writes flowsheet
-- waits for the previous one: production's writers serialize on this row, and so do ours.
CREATE FUNCTION touch_flowsheet_watermark() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
AS $$
BEGIN
    UPDATE flowsheet_watermark
    SET last_modified_at = greatest(now(), last_modified_at)
    WHERE id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER flowsheet_touch_watermark
    AFTER INSERT OR UPDATE OR DELETE ON flowsheet
    FOR EACH STATEMENT EXECUTE FUNCTION touch_flowsheet_watermark();
