"""A realistic, deterministic station day for the scenario harness.

`plan_day` turns a seed and the station's library into the flowsheet entries a day of shows
produces, in broadcast order: show starts and ends, DJ joins, talksets and breakpoints between
sets, linked plays (album_id → library) and unlinked ones, V/A compilations, repeated albums
(a DJ plays the same record twice, which the shared lookup cache should absorb), names with
accents, quotes, emoji and non-Latin scripts, and the empty and whitespace artists DJs really
type. `historical_import` is a batch of plays from more than a day ago (a late import that must
neither flood listeners nor escape the backlog).

Everything is drawn from one `random.Random(seed)`, so a scenario replays the same day and the
LML emulator (deterministic on its input text) gives the same verdicts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from wx_orchestration.devstack.demo_data import ALBUM_WORDS, ARTISTS, COMPILATIONS, TRACK_WORDS

# Beyond the demo station's names: what else trips real systems up.
EXTRA_ARTISTS = (
    "Sigur Rós 🎸",
    "🌙 Moonchild",
    "Ибрагим Ферер",
    "Η Λεωφόρος",  # noqa: RUF001 - Greek on purpose
    "אריק איינשטיין",
    "राग भैरवी",
    "소녀시대",
    "王菲",
    'Mariá\'z "Qüotë" Band',
    "O'Brien & the D'Arcys",
    "Zoë – “Curly” Quotes",  # noqa: RUF001 - typographic quotes on purpose
    "ＦＵＬＬＷＩＤＴＨ",  # noqa: RUF001 - fullwidth forms on purpose
    "A\u0301ccent Combining",
)
VARIOUS = ("Various Artists", "V/A", "Various")
# DJs leave the artist empty or type only whitespace (tab, NBSP, ideographic space): these
# rows stay `pending` and must never be sent to LML.
BLANK_ARTISTS = ("", " ", "\t", "\u00a0", "\u3000 ")
SHOW_NAMES = (
    ("Morning Ragas", "DJ Dawn"),
    ("Lunch Hour Noise", "Pat 'Static' Lee"),
    ("Tropicália Tuesday", "DJ Beleza"),
    ("Late Night Ambient", "Ólafur"),
    ("Ночной эфир", "Саша"),
    ("深夜放送", "ケンジ"),
)
LABELS = ("Merge", "Sub Pop", "Drag City", "Matador", "Les Disques du Crépuscule", None)

TERMINAL_STATUSES = frozenset({"enriched_match", "enriched_no_match", "failed_no_retry"})


@dataclass(frozen=True)
class LibraryRow:
    id: int
    artist: str
    album: str
    compilation: bool


@dataclass
class Entry:
    """One flowsheet row to insert; `columns` are named as in the station's table."""

    columns: dict[str, Any]

    @property
    def is_track(self) -> bool:
        return self.columns.get("entry_type") == "track"

    @property
    def blank_artist(self) -> bool:
        artist = self.columns.get("artist_name")
        return artist is None or not str(artist).strip()


@dataclass
class DayPlan:
    entries: list[Entry] = field(default_factory=list)

    @property
    def plays(self) -> int:
        return sum(1 for e in self.entries if e.is_track)


def _clip(text: str | None, limit: int = 128) -> str | None:
    # varchar(128) in the station's table; a combining accent never gets split from its base.
    if text is None or len(text) <= limit:
        return text
    return text[:limit].rstrip()


def _album_title(rng: random.Random) -> str:
    return " ".join(rng.sample(ALBUM_WORDS, rng.randint(1, 3)))


def _track_title(rng: random.Random) -> str:
    return f"{rng.choice(TRACK_WORDS)} {rng.choice(ALBUM_WORDS)}"


def _unlinked_play(rng: random.Random, favourites: list[tuple[str, str]]) -> dict[str, Any]:
    roll = rng.random()
    if roll < 0.04:
        artist, album = rng.choice(BLANK_ARTISTS), _album_title(rng)
    elif roll < 0.12:
        artist, album = rng.choice(VARIOUS), rng.choice(COMPILATIONS)
    elif roll < 0.45 and favourites:
        # Repeats: the same record again later in the day.
        artist, album = rng.choice(favourites)
    else:
        pool = EXTRA_ARTISTS if rng.random() < 0.25 else ARTISTS
        artist, album = rng.choice(pool), _album_title(rng)
        favourites.append((artist, album))
    return {"album_id": None, "artist_name": artist, "album_title": album}


def _linked_play(rng: random.Random, library: list[LibraryRow]) -> dict[str, Any]:
    row = rng.choice(library)
    return {"album_id": row.id, "artist_name": row.artist, "album_title": row.album}


def plan_day(
    *,
    seed: int,
    plays: int,
    library: list[LibraryRow],
    show_ids: list[int],
    linked_share: float = 0.45,
    plays_per_set: int = 6,
) -> DayPlan:
    """`plays` track rows spread over `show_ids`, with the talk around them, in order."""
    if not show_ids:
        raise ValueError("a day needs at least one show")
    rng = random.Random(seed)
    plan = DayPlan()
    favourites: list[tuple[str, str]] = []
    per_show = max(1, -(-plays // len(show_ids)))
    play_order = 0
    written = 0

    def add(entry_type: str, show_id: int, dj: str, **columns: Any) -> None:
        nonlocal play_order
        play_order += 1
        row = {
            "show_id": show_id,
            "entry_type": entry_type,
            "play_order": play_order,
            "dj_name": dj,
            "request_flag": False,
            "segue": False,
            **columns,
        }
        for name in ("artist_name", "album_title", "track_title", "record_label"):
            if name in row:
                row[name] = _clip(row[name])
        plan.entries.append(Entry(row))

    for index, show_id in enumerate(show_ids):
        if written >= plays:
            break
        name, dj = SHOW_NAMES[index % len(SHOW_NAMES)]
        add("show_start", show_id, dj, message=f"Start of {name}")
        add("dj_join", show_id, dj, message=f"{dj} joined")
        in_show = 0
        while in_show < per_show and written < plays:
            if in_show and in_show % plays_per_set == 0:
                add("talkset", show_id, dj, message="Talkset")
                add("breakpoint", show_id, dj, message="Station ID — WXYC 89.3 FM")
            linked = library and rng.random() < linked_share
            columns = _linked_play(rng, library) if linked else _unlinked_play(rng, favourites)
            add(
                "track",
                show_id,
                dj,
                track_title=_track_title(rng),
                record_label=rng.choice(LABELS),
                request_flag=rng.random() < 0.08,
                segue=rng.random() < 0.2,
                **columns,
            )
            in_show += 1
            written += 1
        add("dj_leave", show_id, dj, message=f"{dj} left")
        add("show_end", show_id, dj, message=f"End of {name}")
    return plan


def historical_import(
    *, seed: int, plays: int, library: list[LibraryRow], show_id: int, now: datetime
) -> list[Entry]:
    """Plays from 25-26 hours ago: older than the live window (no `insert`/`update` frames)
    and than the bridge's first-start look-back window."""
    day = plan_day(seed=seed + 1, plays=plays, library=library, show_ids=[show_id])
    tracks = [e for e in day.entries if e.is_track]
    start = now - timedelta(hours=26)
    for n, entry in enumerate(tracks):
        entry.columns["add_time"] = start + timedelta(seconds=30 * n)
        # A previous play_order range: these came from another day's log.
        entry.columns["play_order"] = 1_000_000 + n
    return tracks


def unique_play(entry: Entry, token: str) -> Entry:
    """The same play with a track title no lookup cache can have seen (degraded windows)."""
    columns = dict(entry.columns)
    title = columns.get("track_title") or "Untitled"
    columns["track_title"] = _clip(f"{title} [{token}]")
    return Entry(columns)
