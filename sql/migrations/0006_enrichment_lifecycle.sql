-- What comes after a verdict (issue #18): where each recurring pass stands, and what every
-- lifecycle run asked and got, for the report and the falling-behind checks.

-- A pass walks its cohort newest play first, (add_time, flowsheet_id) descending, and resumes
-- below the last row it read whatever that row's answer was: a slice LML never answers is
-- read once per pass, never re-read forever. At the bottom the pass wraps to the top.
-- Named per pass kind (`no_match_reask`, `link_upgrade`) and per cohort run (`cohort:<name>`).
CREATE TABLE wx_orchestration.lifecycle_cursors (
    name            text PRIMARY KEY,
    add_time        timestamptz,
    flowsheet_id    integer,
    pass            integer NOT NULL DEFAULT 1,
    pass_started_at timestamptz NOT NULL DEFAULT now(),
    passes_done     integer NOT NULL DEFAULT 0,
    last_pass_s     double precision,
    counters        jsonb NOT NULL DEFAULT '{}',
    saved_at        timestamptz NOT NULL DEFAULT now()
);

-- One row per lifecycle run (re-ask, link upgrade, cohort): its outcome counts and LML calls.
CREATE TABLE wx_orchestration.lifecycle_runs (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL,
    ran_at      timestamptz NOT NULL DEFAULT now(),
    asked       integer NOT NULL DEFAULT 0,
    matched     integer NOT NULL DEFAULT 0,
    stamped     integer NOT NULL DEFAULT 0,
    not_a_verdict integer NOT NULL DEFAULT 0,
    upgraded    integer NOT NULL DEFAULT 0,
    lml_calls   integer NOT NULL DEFAULT 0
);

CREATE INDEX lifecycle_runs_kind_ran_at_idx ON wx_orchestration.lifecycle_runs (kind, ran_at);

-- When the link upgrade last asked LML about a row's search-URL placeholders. Ours, not a
-- column on the station's flowsheet: production has no such marker.
CREATE TABLE wx_orchestration.link_upgrade_attempts (
    flowsheet_id integer PRIMARY KEY,
    attempted_at timestamptz NOT NULL
);
