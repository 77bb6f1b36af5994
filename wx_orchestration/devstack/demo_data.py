"""A small, realistic demo station: library, shows and a day of flowsheet.

Deterministic (a fixed seed), so the LML emulator gives the same verdicts on every machine.
Names cover what trips real systems up: accents, quotes, non-Latin scripts, V/A compilations.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from wx_orchestration.devstack.station_rows import VARIOUS_ARTISTS, insert_artists, insert_library
from wx_orchestration.settings import validate_schema_name

ARTISTS = [
    "Björk",
    "Sigur Rós",
    "Café Tacvba",
    "Os Mutantes",
    "Mdou Moctar",
    "Stereolab",
    "Yo La Tengo",
    "Broadcast",
    "Khruangbin",
    "Tinariwen",
    "Can",
    "Neu!",
    "Cluster",
    "Sun Ra",
    "Alice Coltrane",
    "Pharoah Sanders",
    "Angel Olsen",
    "Big Thief",
    "Waxahatchee",
    "Superchunk",
    "Polvo",
    "Archers of Loaf",
    "Mountain Goats",
    "Sylvan Esso",
    "Hiss Golden Messenger",
    "Chris Stamey",
    "The dB's",
    "Let's Active",
    "Flat Duo Jets",
    "Squirrel Nut Zippers",
    "坂本龍一",
    "細野晴臣",
    "大貫妙子",
    "Фёдор Чистяков",
    "Кино",
    "فيروز",
    "Omar Souleyman",
    "Ásgeir",
    "Mú",
    "Ali Farka Touré",
    "Toumani Diabaté",
    "Fela Kuti",
    "Tony Allen",
    "Françoise Hardy",
    "Serge Gainsbourg",
    "Jane Birkin",
    "Caetano Veloso",
    "Gal Costa",
    "Jorge Ben",
    "Tom Zé",
    "Los Ángeles Azules",
    "Bomba Estéreo",
    "Natalia Lafourcade",
    'The "Heartbreakers"',
    "Guns N' Roses",
    "Sinéad O'Connor",
    "Bob Marley & The Wailers",
    "Boards of Canada",
    "Aphex Twin",
    "Autechre",
    "Four Tet",
    "Floating Points",
    "Burial",
    "Kraftwerk",
    "Harmonia",
    "Popol Vuh",
    "Tangerine Dream",
    "Cocteau Twins",
    "Slowdive",
    "My Bloody Valentine",
    "Low",
    "Galaxie 500",
    "Beat Happening",
    "Sleater-Kinney",
    "Bikini Kill",
    "Le Tigre",
    "Fugazi",
    "Minutemen",
    "Hüsker Dü",
    "Mötley Crüe",
    "Blue Öyster Cult",
    "Motörhead",
    "Sonic Youth",
    "Pavement",
    "Silver Jews",
    "Smog",
]

ALBUM_WORDS = [
    "Night",
    "Garden",
    "Signal",
    "Afterglow",
    "River",
    "Static",
    "Sunrise",
    "Mirror",
    "Orbit",
    "Harvest",
    "Échos",
    "Canción",
    "Träume",
    "Wire",
    "Paper",
    "Lanterns",
    "Atlas",
    "Ghosts",
    "Waves",
    "Horizon",
    "Fields",
    "Rooms",
    "Velvet",
    "Electric",
    "Quiet",
]

COMPILATIONS = [
    "Nuggets: Original Artyfacts",
    "Brazil Classics 1: Beleza Tropical",
    "Éthiopiques Vol. 4",
    "Love, Peace & Poetry: Japanese Psychedelic Music",
    "Ghana Soundz",
    "Kitsuné Maison 5",
    "Pop Ambient 2010",
    "Cambodian Rocks",
    "Saint Etienne Presents: Songs for the Dead",
    "Soul Jazz Records Presents: Punk 45",
]

TRACK_WORDS = [
    "Intro",
    "Blue",
    "Running",
    "Song for",
    "Dreaming",
    "Little",
    "Heart",
    "Moon",
    "Dance",
    "Stranger",
    "Weather",
    "Alone",
    "Together",
    "Amanhã",
    "Été",
    "夜",
    "Светлая",
]

SHOWS = [
    ("Morning Ragas", "DJ Dawn"),
    ("Lunch Hour Noise", "Pat 'Static' Lee"),
    ("Tropicália Tuesday", "DJ Beleza"),
    ("Late Night Ambient", "Ólafur"),
]

_SEED = 20261123


def _album_title(rng: random.Random) -> str:
    return " ".join(rng.sample(ALBUM_WORDS, rng.randint(1, 3)))


def _track_title(rng: random.Random) -> str:
    return f"{rng.choice(TRACK_WORDS)} {rng.choice(ALBUM_WORDS)}"


def _insert_library(conn: psycopg.Connection, rng: random.Random) -> list[tuple[int, str, str]]:
    artist_ids = dict(zip(ARTISTS, insert_artists(conn, ARTISTS), strict=True))
    wanted: list[dict[str, object]] = []
    credited: list[tuple[str, str]] = []
    for index in range(320):
        is_compilation = index % 32 == 0
        if is_compilation:
            artist, album = VARIOUS_ARTISTS, COMPILATIONS[(index // 32) % len(COMPILATIONS)]
            # The V/A artist of `library_defaults`: production requires an artist on every row.
            letters, artist_id = "Z" + rng.choice("ABCDEFG"), None
        else:
            artist = ARTISTS[index % len(ARTISTS)]
            album, letters, artist_id = _album_title(rng), None, artist_ids[artist]
        # Newer library rows carry only artist_id (library.artist_name NULL), as in production.
        denormalised = None if index % 9 == 4 and artist_id is not None else artist
        canonical = None if index % 11 == 7 else f"wxyc:entity:{index:05d}"
        wanted.append(
            {
                "artist_id": artist_id,
                "artist_name": denormalised,
                "album_title": album,
                "code_volume_letters": letters,
                "canonical_entity_id": canonical,
                "code_number": index + 1,
            }
        )
        credited.append((artist, album))
    ids = insert_library(conn, wanted)
    return [(row_id, artist, album) for row_id, (artist, album) in zip(ids, credited, strict=True)]


@dataclass
class _ShowLog:
    """Appends one show's entries in play order, advancing the clock as a DJ would."""

    show_id: int
    dj: str
    at: datetime
    rows: list[dict[str, object]]
    play_order: int

    def add(self, entry_type: str, minutes: float, **cols: object) -> None:
        self.play_order += 1
        self.at += timedelta(minutes=minutes)
        self.rows.append(
            {
                "show_id": self.show_id,
                "entry_type": entry_type,
                "play_order": self.play_order,
                "add_time": self.at,
                "dj_name": self.dj,
                "request_flag": False,
                "segue": False,
                "metadata_status": "pending",
                **cols,
            }
        )


def _flowsheet_rows(
    rng: random.Random, library: list[tuple[int, str, str]], show_ids: list[int], now: datetime
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    play_order = 0
    day_start = now - timedelta(hours=20)
    for show_index, show_id in enumerate(show_ids):
        name, dj = SHOWS[show_index]
        log = _ShowLog(show_id, dj, day_start + timedelta(hours=5 * show_index), rows, play_order)
        last_show = show_index == len(show_ids) - 1
        log.add("show_start", 0, message=f"Start of {name}")
        log.add("dj_join", 0.1, message=f"{dj} joined")
        for play in range(24):
            if play % 8 == 7:
                log.add("talkset", 2, message="Talkset")
                log.add("breakpoint", 0.5, message="Station ID")
            if play == 12:
                # DJs log empty or whitespace artists; these must never be sent to LML. Mid-show,
                # so the demo page's newest play is a real one.
                log.add(
                    "track", 1, artist_name="   ", track_title="Unknown", metadata_status="pending"
                )
            if rng.random() < 0.6:
                album_id, artist, album = rng.choice(library)
            else:
                album_id, artist, album = None, rng.choice(ARTISTS), _album_title(rng)
            status = "pending" if last_show or rng.random() < 0.15 else "enriched_no_match"
            log.add(
                "track",
                rng.uniform(2.5, 6.0),
                album_id=album_id,
                artist_name=artist,
                album_title=album,
                track_title=_track_title(rng),
                record_label=rng.choice(["Merge", "Sub Pop", "Drag City", "Matador", None]),
                request_flag=rng.random() < 0.1,
                segue=rng.random() < 0.2,
                metadata_status=status,
            )
        log.add("message", 1, message="Thanks for listening — 89.3 FM")
        log.add("dj_leave", 0.2, message=f"{dj} left")
        log.add("show_end", 0.1, message=f"End of {name}")
        play_order = log.play_order
    return rows


def load_demo_data(
    database_url: str, *, station_schema: str = "wxyc_schema", force: bool = False
) -> dict[str, int]:
    """Insert the demo station; skipped (all counts 0) when the library already has rows."""
    schema = validate_schema_name(station_schema)
    rng = random.Random(_SEED)  # noqa: S311 - reproducible demo data, not a secret
    now = datetime.now(UTC)
    with psycopg.connect(database_url) as conn:
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        existing = conn.execute("SELECT count(*) FROM library").fetchone()
        if existing and existing[0] and not force:
            return {"library": 0, "shows": 0, "flowsheet": 0}
        library = _insert_library(conn, rng)
        show_ids = []
        for index, (name, _dj) in enumerate(SHOWS):
            row = conn.execute(
                "INSERT INTO shows (show_name, start_time) VALUES (%s, %s) RETURNING id",
                (name, now - timedelta(hours=20 - 5 * index)),
            ).fetchone()
            assert row is not None
            show_ids.append(row[0])
        rows = _flowsheet_rows(rng, library, show_ids, now)
        columns = sorted({key for row in rows for key in row})
        copy = sql.SQL("COPY flowsheet ({}) FROM STDIN").format(
            sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        # One statement: each flowsheet statement moves the station's Last-Modified a second.
        with conn.cursor() as cur, cur.copy(copy) as writer:
            for row in rows:
                writer.write_row([row.get(col) for col in columns])
    return {"library": len(library), "shows": len(show_ids), "flowsheet": len(rows)}
