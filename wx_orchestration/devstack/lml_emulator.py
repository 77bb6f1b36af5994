"""LML EMULATOR: a stand-in for the Library Metadata Lookup service, for dev stacks and tests.

It is not LML. It speaks the wire contract of DESIGN.md §3 over real HTTP, answers deterministically
(a BLAKE2b hash of the normalised input text picks every value), says it is an emulator (the
`Server` header, `"emulator": true` in /health, its log line) and can misbehave on demand.

Fault switches (`Faults`) are set at start (keywords / CLI flags) or at runtime with
`POST /_emulator/faults` (partial JSON), read with `GET /_emulator/faults` and restored to their
start values with `DELETE /_emulator/faults`. Faults apply to the `/api/v1/*` endpoints only:

- `latency_ms`: delay before answering.
- `error_rate`: fraction of requests answered 500 or 503.
- `rate_limit`: the next N requests are answered 429 (counts down); `rate_limit_rate`: a fraction of
  requests are; both send `Retry-After: <retry_after>`.
- `degraded`: lookups answer `degraded: true, degraded_reason: "upstream_unavailable"` with no
  results; bulk items answer `shed_breaker_open` when `breaker_state` is "open", else
  `shed_limiter_saturated`.
- `breaker_state`: `discogs_breaker_state` reported by /health.
- `malformed`: fraction of 200 answers whose body is not JSON.
- `short_results` / `foreign_results` / `duplicate_results`: bulk-resolve drops its last result /
  adds one for a library id that was not sent / repeats its first result.
- `degraded_reason`: lookups answer `degraded: true` with this reason and no results (the shape
  of a current LML past its deadline, `deadline_exceeded`, or on its cache only, `cache_only`).
- `bulk_answers`: how `/lookup/bulk` answers the items it was sent: `all` (one result each),
  `short` (the last one missing), `empty` (`{"results": []}`), `out_of_range` (the last one at an
  index that was not sent), `null_lookup` (statuses without a lookup), `item_error` (every item
  `error`).
- `seed`: makes every random choice above repeatable (`random.Random(seed)`).

Modes (`mode`, started from env `LML_EMULATOR_MODE`; switchable like a fault):

- `current` (default): the LML of today (`tracks_contract_version` null, even for compilations
  sent with `include_tracks`).
- `feb2026`: the February 2026 LML: `/api/v1/lookup` and `/health` only (the bulk lookup and
  identity endpoints answer 404), no `degraded` field, and `/health` reports
  `services.discogs_api` instead of a breaker state. With `discogs_unavailable` it says
  `"unavailable"` there and answers library hits with `artwork: null`.

`GET /_emulator/requests` lists `{ts, method, path, query, caller, items, status}` of recent
requests (`caller`: the `X-Caller-*` headers sent); `DELETE /_emulator/requests` clears the list.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import os
import random
import socket
import string
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx
import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wx_orchestration.contracts.lml import (
    BULK_RESOLVE_PATH,
    HEALTH_PATH,
    LOOKUP_BULK_PATH,
    LOOKUP_PATH,
    MAX_BULK_RESOLVE_INPUTS,
    MAX_LOOKUP_BULK_ITEMS,
    BulkLookupRequest,
    BulkResolveInput,
    BulkResolveRequest,
    LookupItem,
)

LOGGER = logging.getLogger("wx_orchestration.devstack.lml_emulator")

SERVER_HEADER = "lml-emulator (wx_orchestration; NOT the real LML)"
MODE_ENV = "LML_EMULATOR_MODE"
EmulatorMode = Literal["current", "feb2026"]
BulkAnswers = Literal["all", "short", "empty", "out_of_range", "null_lookup", "item_error"]
# Endpoints the February 2026 LML did not have yet.
_FEB2026_MISSING = frozenset({BULK_RESOLVE_PATH, LOOKUP_BULK_PATH})
_LOOKUP_EXTRAS = ("degraded", "degraded_reason")
REQUEST_LOG_SIZE = 100_000
METHODS = (
    "manual",
    "cross_source_agreement",
    "exact_match",
    "name_variation",
    "member_group",
    "alias_match",
    "trigram",
    "llm",
)
SOURCES = ("discogs", "musicbrainz", "wikidata", "spotify", "apple_music", "bandcamp")
_BASE62 = string.digits + string.ascii_letters
_MALFORMED_BODY = b'{"results": [ <lml-emulator: deliberately malformed body'


class Faults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=0.0, ge=0)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    rate_limit: int = Field(default=0, ge=0)
    rate_limit_rate: float = Field(default=0.0, ge=0, le=1)
    retry_after: int = Field(default=1, ge=0)
    degraded: bool = False
    breaker_state: str | None = "closed"
    malformed: float = Field(default=0.0, ge=0, le=1)
    short_results: bool = False
    foreign_results: bool = False
    duplicate_results: bool = False
    degraded_reason: str | None = None
    bulk_answers: BulkAnswers = "all"
    discogs_unavailable: bool = False
    mode: EmulatorMode = "current"
    seed: int | None = None


# --- deterministic answers -------------------------------------------------------------------


def _digest(*parts: str, size: int = 8) -> int:
    joined = "\x1f".join(parts).encode()
    return int.from_bytes(hashlib.blake2b(joined, digest_size=size).digest(), "big")


def _norm(text: str | None) -> str:
    return " ".join((text or "").split()).casefold()


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(_BASE62[digit])
    return "".join(chars)


def _slug(text: str) -> str:
    return "".join(ch for ch in text if ch.isascii() and ch.isalnum()) or "artist"


def is_compilation_artist(artist_name: str | None) -> bool:
    artist = _norm(artist_name)
    return artist in {"v/a", "va"} or artist.startswith("various")


def _artist_ids(artist: str) -> dict[str, Any]:
    seed = _digest("artist-ids", artist)
    return {
        "discogs_artist_id": 1 + seed % 9_000_000,
        "musicbrainz_artist_id": str(uuid.UUID(int=_digest("mbid", artist, size=16))),
        "wikidata_qid": f"Q{1 + seed % 120_000_000}",
        "spotify_artist_id": _base62(_digest("spotify", artist, size=16), 22),
        "apple_music_artist_id": str(1 + seed % 1_900_000_000),
        "bandcamp_id": None if seed % 3 == 0 else _slug(artist),
    }


_SOURCE_ID_KEY = {
    "discogs": "discogs_artist_id",
    "musicbrainz": "musicbrainz_artist_id",
    "wikidata": "wikidata_qid",
    "spotify": "spotify_artist_id",
    "apple_music": "apple_music_artist_id",
    "bandcamp": "bandcamp_id",
}


def emulated_track_credits(album_title: str) -> list[dict[str, str]]:
    """The tracks the emulator credits on a compilation titled `album_title`, in the echo shape
    (`artist_name`, `track_title`, `track_position`), for fixtures to seed matching rows."""
    album = _norm(album_title)
    return [
        {
            "artist_name": f"Emulated artist {n}",
            "track_title": f"Emulated track {n}",
            "track_position": str(n),
        }
        for n in range(1, 2 + _digest("track-count", album) % 8)
    ]


def resolve_library(item: BulkResolveInput, include_tracks: bool) -> dict[str, Any]:
    """The emulator's bulk-resolve answer for one input."""
    artist, album = _norm(item.artist_name), _norm(item.album_title)
    if is_compilation_artist(artist):
        # Like a current LML, the per-track matcher runs only when asked for tracks, and not
        # for every compilation; its credits echo the station's `compilation_track_artist` rows
        # as `emulated_track_credits` names them.
        attempted = include_tracks and _digest("tracks", album) % 2 == 0
        result: dict[str, Any] = {
            "kind": "compilation",
            "library_id": item.library_id,
            "provenance": [],
            "tracks_attempted": attempted,
        }
        if attempted:
            result["tracks"] = [
                {
                    **credit,
                    # A few misses on purpose: LML sends them and the writer must skip them.
                    "resolved_artist_name": None if n % 4 == 0 else credit["artist_name"],
                    "confidence": round(0.5 + _digest("track", album, str(n)) % 501 / 1000, 3),
                }
                for n, credit in enumerate(emulated_track_credits(album), start=1)
            ]
        return result
    if not artist or _digest("resolvable", artist) % 10 == 0:
        return {"kind": "unresolved", "library_id": item.library_id, "provenance": []}
    ids = _artist_ids(artist)
    sources = sorted(SOURCES, key=lambda source: _digest("source-order", artist, source))
    provenance = []
    for source in sources[: 1 + _digest("source-count", artist) % 4]:
        roll = _digest("provenance", artist, source)
        external_id = ids[_SOURCE_ID_KEY[source]]
        provenance.append(
            {
                "source": source,
                "method": METHODS[roll % len(METHODS)],
                # A few nulls on purpose: LML sends them and the identity writer must cope.
                "confidence": None if roll % 20 == 0 else round(0.5 + roll % 501 / 1000, 3),
                "external_id": None if external_id is None or roll % 33 == 0 else str(external_id),
            }
        )
    pick = _digest("method", artist, album)
    return {
        "kind": "single_artist",
        "library_id": item.library_id,
        "provenance": provenance,
        "main": ids,
        "method": METHODS[pick % len(METHODS)],
        "confidence": round(0.6 + (pick >> 8) % 401 / 1000, 3),
        "tracks_attempted": False,
    }


# Image URLs as the pure answer functions give them. An emulator serving its own artwork
# (`art_base`, set by `wx up`) rewrites them to its `/art/` route, so the offline demo shows
# pictures; tests keep the placeholder, which never resolves.
ART_PLACEHOLDER = "https://img.emulator.invalid/"
ART_ROUTE = "/art/"


def _rebase_art(value: Any, art_base: str) -> Any:
    if isinstance(value, str):
        return (
            art_base + value[len(ART_PLACEHOLDER) :] if value.startswith(ART_PLACEHOLDER) else value
        )
    if isinstance(value, dict):
        return {key: _rebase_art(item, art_base) for key, item in value.items()}
    if isinstance(value, list):
        return [_rebase_art(item, art_base) for item in value]
    return value


def cover_svg(name: str) -> str:
    """A square cover of two colours drawn from `name`: distinct per release, stable per name."""
    digest = hashlib.sha256(name.encode()).digest()
    first, second = (f"#{digest[i]:02x}{digest[i + 1]:02x}{digest[i + 2]:02x}" for i in (0, 3))
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 120 120" width="600" height="600">'
        f'<rect width="120" height="120" fill="{first}"/>'
        f'<circle cx="60" cy="60" r="{24 + digest[6] % 24}" fill="{second}"/>'
        '<circle cx="60" cy="60" r="4" fill="#111"/></svg>'
    )


def _artwork(item: LookupItem, seed: int) -> dict[str, Any]:
    artist = " ".join(item.artist.split())
    album = " ".join((item.album or item.song or "Untitled").split())
    ids = _artist_ids(_norm(artist))
    slug = _slug(artist.casefold())
    release_id = 1 + seed % 30_000_000
    year = 1955 + (seed >> 32) % 70
    writer_credits = (
        {"names": [artist], "provenance": "lml-emulator"} if item.song and seed % 3 == 0 else None
    )
    bandcamp = None if seed % 4 == 0 else f"https://{slug}.bandcamp.com/album/{_slug(album)}"
    artwork = {
        "release_id": release_id,
        "release_url": f"https://www.discogs.com/release/{release_id}",
        "album": album,
        "artist": artist,
        "artwork_url": f"{ART_PLACEHOLDER}{seed:016x}.jpg",
        "release_year": year,
        "artist_bio": f"{artist} is an artist invented by the [a=LML emulator].",
        "wikipedia_url": f"https://en.wikipedia.org/wiki/{quote(artist.replace(' ', '_'))}",
        "spotify_url": "https://open.spotify.com/album/"
        + _base62(_digest("spotify-album", str(seed), size=16), 22),
        "apple_music_url": f"https://music.apple.com/us/album/{_slug(album)}/{release_id}",
        "youtube_music_url": "https://music.youtube.com/channel/UC"
        + _base62(_digest("youtube", _norm(artist), size=16), 22),
        "bandcamp_url": bandcamp,
        "soundcloud_url": None if seed % 5 == 0 else f"https://soundcloud.com/{slug}",
        "writer_credits": writer_credits,
        # LML's verdicts: a Bandcamp link it found is verified, one it looked for and did not
        # find is absent; Apple Music lookups sometimes do not finish (unresolved).
        "streaming_status": {
            "spotify": "verified",
            "apple_music": "verified" if seed % 7 else "unresolved",
            "bandcamp": "absent" if bandcamp is None else "verified",
        },
    }
    if seed % 7 == 0:
        artwork["apple_music_url"] = None
    if item.extended:
        artwork.update(
            {
                "discogs_artist_id": ids["discogs_artist_id"],
                "label": f"{_slug(artist).title()} Records",
                "full_release_date": f"{year}-{1 + seed % 12:02d}-{1 + seed % 28:02d}",
                "genres": ["Electronic", "Rock"][: 1 + seed % 2],
                "styles": ["Krautrock", "Post-Rock", "Lounge"][: 1 + seed % 3],
                "tracklist": [
                    {"position": f"A{n}", "title": f"{album} part {n}", "duration": "4:0{n}"}
                    for n in range(1, 3 + seed % 4)
                ],
                "artist_image_url": f"{ART_PLACEHOLDER}artist/{ids['discogs_artist_id']}.jpg",
                "profile_tokens": [
                    {"type": "text", "text": f"{artist} is an artist invented by the "},
                    {"type": "artist", "text": "LML emulator", "id": 1},
                ],
            }
        )
    return artwork


def lookup_item(item: LookupItem) -> dict[str, Any]:
    """The emulator's `LookupResponse` for one item: ~75% direct matches, the rest none."""
    seed = _digest("lookup", _norm(item.artist), _norm(item.album), _norm(item.song))
    if seed % 100 >= 75:
        return {"results": [], "search_type": "none", "degraded": False, "timeout": False}
    library_item = {
        # About one match in ten is not a row of the station's library (id 0).
        "id": 0 if (seed >> 16) % 10 == 0 else 1 + (seed >> 20) % 200_000,
        "title": " ".join((item.album or item.song or "Untitled").split()),
        "artist": " ".join(item.artist.split()),
    }
    return {
        "results": [{"library_item": library_item, "artwork": _artwork(item, seed)}],
        "search_type": "direct",
        "degraded": False,
        "timeout": False,
    }


_DEGRADED_LOOKUP = {
    "results": [],
    "search_type": "none",
    "degraded": True,
    "degraded_reason": "upstream_unavailable",
    "timeout": False,
}


def _answer_lookup(item: LookupItem, faults: Faults) -> dict[str, Any]:
    """One item's `LookupResponse` as the emulated LML version, with its faults, says it."""
    if faults.degraded:
        answer = dict(_DEGRADED_LOOKUP)
    elif faults.degraded_reason is not None:
        answer = {**_DEGRADED_LOOKUP, "degraded_reason": faults.degraded_reason}
    else:
        answer = lookup_item(item)
    if faults.mode != "feb2026":
        return answer
    # The February 2026 LML has no `degraded` field, and with Discogs down it still finds the
    # library rows, with no artwork.
    old = {key: value for key, value in answer.items() if key not in _LOOKUP_EXTRAS}
    if faults.discogs_unavailable:
        old["results"] = [{**result, "artwork": None} for result in old["results"]]
    return old


# --- the server --------------------------------------------------------------------------------


class _ServerHeader:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_labelled(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
                message["headers"] = [*headers, (b"server", SERVER_HEADER.encode())]
            await send(message)

        await self.app(scope, receive, send_labelled)


class _Refusal(Exception):
    def __init__(self, status: int, detail: object, items: int = 0) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.items = items


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
        for error in exc.errors(include_url=False, include_input=False)
    ]


def _item_count(body: object, key: str) -> int:
    values = body.get(key) if isinstance(body, dict) else None
    return len(values) if isinstance(values, list) else 0


class LmlEmulator:
    """The emulator's state and Starlette app. `api_key` empty: any or no Authorization passes."""

    def __init__(self, api_key: str = "", *, art_base: str | None = None, **faults: Any) -> None:
        self.api_key = api_key
        # Where answers point for artwork (this emulator's `/art/` URL); None keeps the placeholder.
        self.art_base = art_base
        faults.setdefault("mode", os.environ.get(MODE_ENV) or "current")
        self._initial = Faults.model_validate(faults)
        self._faults = self._initial.model_copy()
        # Not security relevant: fault injection must be repeatable under a seed.
        self._rng = random.Random(self._initial.seed)  # noqa: S311
        self._log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route(BULK_RESOLVE_PATH, self._api, methods=["POST"]),
                Route(LOOKUP_BULK_PATH, self._api, methods=["POST"]),
                Route(LOOKUP_PATH, self._api, methods=["POST"]),
                Route(HEALTH_PATH, self._health, methods=["GET"]),
                Route(ART_ROUTE + "{name:path}", self._art, methods=["GET"]),
                Route(
                    "/_emulator/faults", self._faults_endpoint, methods=["GET", "POST", "DELETE"]
                ),
                Route("/_emulator/requests", self._requests_endpoint, methods=["GET", "DELETE"]),
            ],
            middleware=[Middleware(_ServerHeader)],
        )

    def faults(self) -> Faults:
        with self._lock:
            return self._faults.model_copy()

    def set_faults(self, **changes: Any) -> Faults:
        with self._lock:
            updated = Faults.model_validate({**self._faults.model_dump(), **changes})
            if "seed" in changes:
                self._rng = random.Random(updated.seed)  # noqa: S311
            self._faults = updated
            return updated.model_copy()

    def reset_faults(self) -> None:
        """Start values for every fault, and the seed's sequence from its beginning."""
        with self._lock:
            self._faults = self._initial.model_copy()
            self._rng = random.Random(self._initial.seed)  # noqa: S311

    def reset(self) -> None:
        self.reset_faults()
        self.clear_requests()

    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def _record(self, request: Request, items: int, status: int) -> None:
        entry = {
            "ts": time.time(),
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "caller": {
                name: value
                for name, value in request.headers.items()
                if name.startswith("x-caller-")
            },
            "items": items,
            "status": status,
        }
        with self._lock:
            self._log.append(entry)

    def _chance(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def _take_rate_limit(self) -> bool:
        with self._lock:
            if self._faults.rate_limit > 0:
                self._faults.rate_limit -= 1
                return True
            rate = self._faults.rate_limit_rate
            return rate > 0 and self._rng.random() < rate

    def _check_auth(self, request: Request) -> None:
        if not self.api_key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _Refusal(401, "missing bearer token")
        if not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise _Refusal(403, "invalid API key")

    async def _api(self, request: Request) -> Response:
        items = 0
        # Logged even when the client gives up during the emulated latency (499, as nginx
        # says): LML received that call, and rate checks count from this log.
        status = 499
        try:
            raw = await request.body()
            try:
                faults = self.faults()
                if faults.mode == "feb2026" and request.url.path in _FEB2026_MISSING:
                    raise _Refusal(404, "Not Found")
                self._check_auth(request)
                if self._take_rate_limit():
                    response: Response = JSONResponse(
                        {"detail": "rate limited (emulated)"},
                        status_code=429,
                        headers={"Retry-After": str(faults.retry_after)},
                    )
                else:
                    if faults.latency_ms:
                        await asyncio.sleep(faults.latency_ms / 1000)
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        raise _Refusal(422, "body is not JSON") from None
                    items, payload = self._answer(request.url.path, body, faults)
                    if self.art_base:
                        payload = _rebase_art(payload, self.art_base)
                    response = self._deliver(payload, faults)
            except _Refusal as refusal:
                items = refusal.items
                response = JSONResponse({"detail": refusal.detail}, status_code=refusal.status)
            status = response.status_code
            return response
        finally:
            self._record(request, items, status)

    def _deliver(self, payload: dict[str, Any], faults: Faults) -> Response:
        if self._chance(faults.error_rate):
            with self._lock:
                status = self._rng.choice((500, 503))
            return JSONResponse({"detail": f"emulated upstream failure {status}"}, status)
        if self._chance(faults.malformed):
            return Response(_MALFORMED_BODY, media_type="application/json")
        return JSONResponse(payload)

    def _answer(self, path: str, body: object, faults: Faults) -> tuple[int, dict[str, Any]]:
        if path == BULK_RESOLVE_PATH:
            return self._bulk_resolve(body, faults)
        if path == LOOKUP_BULK_PATH:
            return self._lookup_bulk(body, faults)
        return 1, self._lookup(body, faults)

    def _bulk_resolve(self, body: object, faults: Faults) -> tuple[int, dict[str, Any]]:
        count = _item_count(body, "inputs")
        if count > MAX_BULK_RESOLVE_INPUTS:
            raise _Refusal(413, f"at most {MAX_BULK_RESOLVE_INPUTS} inputs", count)
        try:
            request = BulkResolveRequest.model_validate(body)
        except ValidationError as exc:
            raise _Refusal(422, _errors(exc), count) from None
        if not request.inputs:
            raise _Refusal(422, "inputs must not be empty")
        results = [resolve_library(item, request.include_tracks) for item in request.inputs]
        if faults.short_results:
            results.pop()
        if faults.foreign_results:
            stranger = max(item.library_id for item in request.inputs) + 1_000_000
            impostor = request.inputs[0].model_copy(update={"library_id": stranger})
            results.append(resolve_library(impostor, request.include_tracks))
        if faults.duplicate_results and results:
            results.append(dict(results[0]))
        return count, {
            "results": results,
            "cache_stats": {"hits": 0, "misses": count, "emulator": True},
            # A current LML answers null here even when asked for tracks.
            "tracks_contract_version": None,
        }

    def _lookup_bulk(self, body: object, faults: Faults) -> tuple[int, dict[str, Any]]:
        count = _item_count(body, "items")
        if count > MAX_LOOKUP_BULK_ITEMS:
            raise _Refusal(413, f"at most {MAX_LOOKUP_BULK_ITEMS} items", count)
        try:
            request = BulkLookupRequest.model_validate(body)
        except ValidationError as exc:
            raise _Refusal(422, _errors(exc), count) from None
        shed = "shed_breaker_open" if faults.breaker_state == "open" else "shed_limiter_saturated"
        results: list[dict[str, Any]] = []
        for index, item in enumerate(request.items):
            if not item.artist.strip():
                entry = {"status": "error", "lookup": None, "message": "artist must not be blank"}
            elif faults.degraded:
                entry = {"status": shed, "lookup": None, "message": "emulated load shedding"}
            elif faults.bulk_answers == "item_error":
                entry = {"status": "error", "lookup": None, "message": "emulated item failure"}
            else:
                lookup = _answer_lookup(item, faults)
                status = "match" if lookup["results"] else "no_match"
                entry = {"status": status, "lookup": lookup}
                if faults.bulk_answers == "null_lookup":
                    entry["lookup"] = None
            results.append({"index": index, "message": None, **entry})
        if faults.bulk_answers == "empty":
            results = []
        elif faults.bulk_answers == "short":
            results = results[:-1]
        elif faults.bulk_answers == "out_of_range" and results:
            results[-1]["index"] = count + 5
        return count, {"results": results}

    def _lookup(self, body: object, faults: Faults) -> dict[str, Any]:
        try:
            item = LookupItem.model_validate(body)
        except ValidationError as exc:
            raise _Refusal(422, _errors(exc), 1) from None
        if not item.artist.strip():
            raise _Refusal(422, "artist must not be blank", 1)
        return _answer_lookup(item, faults)

    async def _art(self, request: Request) -> Response:
        return Response(
            cover_svg(request.path_params["name"]),
            media_type="image/svg+xml",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    async def _health(self, request: Request) -> Response:
        faults = self.faults()
        payload: dict[str, Any] = {"status": "ok", "emulator": True, "service": "lml-emulator"}
        if faults.mode == "feb2026":
            discogs = "unavailable" if faults.discogs_unavailable else "ok"
            payload["services"] = {"database": "ok", "discogs_api": discogs}
        else:
            payload["discogs_breaker_state"] = faults.breaker_state
        self._record(request, 0, 200)
        return JSONResponse(payload)

    async def _faults_endpoint(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.reset_faults()
        elif request.method == "POST":
            try:
                changes = json.loads(await request.body())
                if not isinstance(changes, dict):
                    raise TypeError("expected a JSON object")
                self.set_faults(**changes)
            except ValidationError as exc:
                return JSONResponse({"detail": _errors(exc)}, status_code=422)
            except (ValueError, TypeError) as exc:
                return JSONResponse({"detail": str(exc)}, status_code=422)
        return JSONResponse(self.faults().model_dump())

    async def _requests_endpoint(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.clear_requests()
            return Response(status_code=204)
        return JSONResponse(self.requests())


# --- running it ----------------------------------------------------------------------------------


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    # Listening before uvicorn starts lets early clients queue instead of being refused.
    sock.listen(1024)
    return sock


def _url(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - mapping a wildcard bind to a dialable URL
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(emulator: LmlEmulator) -> uvicorn.Server:
    config = uvicorn.Config(
        emulator.app,
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        server_header=False,
    )
    return uvicorn.Server(config)


@dataclass
class EmulatorHandle:
    """A running emulator in a background thread of this process."""

    url: str
    emulator: LmlEmulator
    _server: uvicorn.Server
    _thread: threading.Thread

    def set_faults(self, **changes: Any) -> Faults:
        return self.emulator.set_faults(**changes)

    def faults(self) -> Faults:
        return self.emulator.faults()

    def requests(self) -> list[dict[str, Any]]:
        return self.emulator.requests()

    def clear_requests(self) -> None:
        self.emulator.clear_requests()

    def reset(self) -> None:
        self.emulator.reset()

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_in_thread(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    api_key: str = "",
    ready_timeout: float = 10.0,
    serve_art: bool = False,
    **faults: Any,
) -> EmulatorHandle:
    """Serves an emulator on `host:port` (0: a free port) and returns once it answers /health.
    `serve_art`: answers point at this emulator's own artwork instead of the placeholder."""
    sock = _bind(host, port)
    url = _url(host, sock)
    emulator = LmlEmulator(
        api_key=api_key, art_base=url + ART_ROUTE if serve_art else None, **faults
    )
    server = _server(emulator)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="lml-emulator", daemon=True
    )
    thread.start()
    handle = EmulatorHandle(url, emulator, server, thread)
    deadline = time.monotonic() + ready_timeout
    while True:
        remaining = deadline - time.monotonic()
        if not thread.is_alive() or remaining <= 0:
            handle.stop()
            sock.close()
            raise RuntimeError(f"LML emulator did not answer on {url} within {ready_timeout}s")
        try:
            if httpx.get(url + HEALTH_PATH, timeout=remaining).status_code == 200:
                break
        except httpx.HTTPError:
            # The socket already listens, so a failure here means startup is not done.
            thread.join(min(0.05, max(remaining, 0)))
    emulator.clear_requests()
    LOGGER.info("LML EMULATOR (not the real LML) serving on %s", url)
    return handle


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wx_orchestration.devstack.lml_emulator",
        description="LML EMULATOR for dev and tests (not the real LML).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--api-key", default="", help="require this bearer token (empty: none)")
    for name, info in Faults.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if info.annotation is bool:
            parser.add_argument(flag, dest=name, action="store_const", const=True, default=None)
        else:
            parser.add_argument(flag, dest=name, default=None, help=f"fault switch {name}")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = vars(_parser().parse_args(argv))
    host, port, api_key = args.pop("host"), args.pop("port"), args.pop("api_key")
    faults = {name: value for name, value in args.items() if value is not None}
    sock = _bind(host, port)
    url = _url(host, sock)
    # `wx up`'s emulator: answers point at its own artwork, so the offline demo shows covers.
    emulator = LmlEmulator(api_key=api_key, art_base=url + ART_ROUTE, **faults)
    logging.basicConfig(level=logging.INFO)
    LOGGER.info("LML EMULATOR (not the real LML) serving on %s", url)
    print(url, flush=True)
    _server(emulator).run(sockets=[sock])


if __name__ == "__main__":
    main()
