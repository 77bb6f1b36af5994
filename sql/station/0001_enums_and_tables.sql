-- Dev/test mirror of the station's tables (DESIGN.md §2). Production owns the real ones;
-- this file is never applied there.
--
-- No schema name appears here: the migration runner creates the station schema (default
-- `wxyc_schema`, overridable with WXYC_SCHEMA_NAME) and sets `search_path` to it first, so
-- tests can build any number of isolated copies side by side.
--
-- Columns the real tables have and this project never uses are left out. Every column kept
-- beyond the ones DESIGN.md lists is nullable or defaulted, so a fixture can insert a row
-- giving only the documented columns.

CREATE TYPE metadata_status_enum AS ENUM (
    'pending',
    'enriching',
    'enriched_match',
    'enriched_no_match',
    'failed_no_retry'
);

CREATE TYPE flowsheet_entry_type AS ENUM (
    'track',
    'show_start',
    'show_end',
    'dj_join',
    'dj_leave',
    'talkset',
    'breakpoint',
    'message'
);

CREATE TABLE artists (
    id          serial PRIMARY KEY,
    artist_name varchar(128)
);

-- Production also has NOT NULL genre_id, format_id and code_number without defaults; this
-- project only reads and stamps library rows, so they are left out.
-- As in production, new rows are numbered past the imported legacy ids, so fixtures that give
-- small legacy_release_id values explicitly never collide with defaulted ones.
CREATE SEQUENCE library_legacy_release_id_seq START WITH 1000000;

CREATE TABLE library (
    id                      serial PRIMARY KEY,
    artist_id               integer REFERENCES artists (id),
    artist_name             varchar(128),
    album_title             varchar(128) NOT NULL,
    legacy_release_id       integer NOT NULL UNIQUE
                            DEFAULT nextval('library_legacy_release_id_seq'),
    code_volume_letters     varchar(4),
    canonical_entity_id     text,
    unresolved_attempted_at timestamptz
);

ALTER SEQUENCE library_legacy_release_id_seq OWNED BY library.legacy_release_id;

CREATE TABLE shows (
    id         serial PRIMARY KEY,
    show_name  varchar(128),
    dj_name    text,
    start_time timestamptz NOT NULL DEFAULT now(),
    end_time   timestamptz
);

-- show_id carries no foreign key here (production's has one, ON DELETE SET NULL) so that
-- fixtures can log plays without first inventing a show.
CREATE TABLE flowsheet (
    id                   serial PRIMARY KEY,
    show_id              integer,
    album_id             integer REFERENCES library (id) ON DELETE SET NULL,
    entry_type           flowsheet_entry_type NOT NULL DEFAULT 'track',
    artist_name          varchar(128),
    album_title          varchar(128),
    track_title          varchar(128),
    record_label         varchar(128),
    play_order           integer NOT NULL,
    request_flag         boolean NOT NULL DEFAULT false,
    segue                boolean NOT NULL DEFAULT false,
    message              varchar(250),
    add_time             timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    dj_name              text,
    artwork_url          varchar(512),
    discogs_url          varchar(512),
    spotify_url          varchar(512),
    apple_music_url      varchar(512),
    youtube_music_url    varchar(512),
    bandcamp_url         varchar(512),
    soundcloud_url       varchar(512),
    artist_wikipedia_url varchar(512),
    release_year         smallint,
    artist_bio           text,
    composer             text,
    composer_source      text,
    metadata_status      metadata_status_enum NOT NULL DEFAULT 'pending',
    enriching_since      timestamptz,
    -- Kept so CDC payloads carry a column this project does not know, as production's do.
    search_doc           tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('simple', coalesce(artist_name, '')), 'A')
        || setweight(to_tsvector('simple', coalesce(track_title, '')), 'B')
        || setweight(to_tsvector('simple', coalesce(album_title, '')), 'C')
    ) STORED
);

-- The enrichment work queue; a query must repeat the whole predicate to use it.
CREATE INDEX flowsheet_metadata_status_pending_idx ON flowsheet (id)
    WHERE entry_type = 'track' AND artist_name IS NOT NULL AND metadata_status = 'pending';

-- Stranded-claim sweep: range scan on claim time within the `enriching` slice.
CREATE INDEX flowsheet_metadata_status_enriching_stale_idx ON flowsheet (enriching_since)
    WHERE metadata_status = 'enriching';

-- Newest-first listings (`ORDER BY add_time DESC, id DESC`).
CREATE INDEX flowsheet_add_time_id_idx ON flowsheet (add_time DESC, id DESC);

-- CDC catch-up scans forward from a saved (updated_at, id) watermark.
CREATE INDEX flowsheet_updated_at_id_idx ON flowsheet (updated_at, id);

CREATE INDEX flowsheet_show_id_idx ON flowsheet (show_id);

-- Single row (the singleton CHECK), advanced by a per-statement trigger on flowsheet.
CREATE TABLE flowsheet_watermark (
    id               boolean PRIMARY KEY DEFAULT true CHECK (id = true),
    last_modified_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO flowsheet_watermark DEFAULT VALUES;

CREATE TABLE album_metadata (
    album_id             integer PRIMARY KEY REFERENCES library (id) ON DELETE CASCADE,
    artwork_url          varchar(512),
    discogs_url          varchar(512),
    spotify_url          varchar(512),
    apple_music_url      varchar(512),
    youtube_music_url    varchar(512),
    bandcamp_url         varchar(512),
    soundcloud_url       varchar(512),
    artist_wikipedia_url varchar(512),
    release_year         smallint,
    artist_bio           text,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE library_identity (
    library_id                     integer PRIMARY KEY REFERENCES library (id),
    discogs_master_id              integer,
    discogs_release_id             integer,
    musicbrainz_release_group_mbid uuid,
    musicbrainz_release_mbid       uuid,
    musicbrainz_recording_mbid     uuid,
    wikidata_qid                   text,
    spotify_id                     text,
    apple_music_id                 text,
    last_verified_at               timestamptz NOT NULL,
    method                         text NOT NULL,
    confidence                     real NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    agreement_sources              text,
    notes                          text
);

-- `source` has no CHECK: production writes names beyond the six LML reports.
CREATE TABLE library_identity_source (
    library_id       integer NOT NULL REFERENCES library (id),
    source           text NOT NULL,
    external_id      text NOT NULL,
    method           text NOT NULL,
    confidence       real NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    last_verified_at timestamptz NOT NULL,
    boost_sources    text,
    notes            text,
    PRIMARY KEY (library_id, source)
);
