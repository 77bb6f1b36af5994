-- The rest of production's "not on Discogs" flag on `library` (BS#1281; schema.ts in
-- WXYC/Backend-Service): the music director's note, which may exist only while the flag is set,
-- and the recheck cron's stamp. The live feed shows the flag and the note on linked rows.
ALTER TABLE library
    ADD COLUMN discogs_unavailable_note varchar(500),
    ADD COLUMN last_discogs_recheck_at timestamptz,
    ADD CONSTRAINT library_discogs_unavailable_note_check
        CHECK (discogs_unavailable OR discogs_unavailable_note IS NULL);

CREATE INDEX library_discogs_unavailable_idx ON library (discogs_unavailable)
    WHERE discogs_unavailable = true;
