"""A short-lived cache of recent LML verdicts, shared in Redis by every sidecar (issue #8).

A DJ playing the same album twice within the hour must cost one LML call, whichever sidecar
instance sees the plays, so the cache lives in Redis, not in a process. Only terminal verdicts
(`match`, `no_match`) are kept: a degraded, shed or failed answer says nothing about the record
and must be asked again. Entries expire after `ttl_s` from the lookup (hits do not extend them),
so a corrected LML answer reaches listeners within that time.

Keys: `wx:lml:cache:<sha256 of the normalised (artist, album, track)>`. Normalised means NFKC,
case-folded and whitespace-collapsed, which is what LML matches on; accents are kept, since they
can tell two records apart. The cache is an optimisation only: when Redis fails, every key is a
miss and nothing is stored (said once per outage), and enrichment goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
from collections.abc import Collection, Mapping
from typing import Any

import redis
from pydantic import ValidationError

from wx_orchestration.contracts.lml import Artwork
from wx_orchestration.core.enrichment import LookupKey, Verdict

log = logging.getLogger("wx_orchestration.lookup_cache")

KEY_PREFIX = "wx:lml:cache:"
# Bumped when the stored shape changes: entries of another version are misses, not errors.
_FORMAT = 1
_CACHED_KINDS = frozenset({"match", "no_match"})


def _normalised(text: str | None) -> str | None:
    if text is None:
        return None
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def cache_key(key: LookupKey) -> str:
    parts = [_normalised(key.artist), _normalised(key.album), _normalised(key.track)]
    # JSON keeps None apart from "" and stops separators inside titles from colliding.
    digest = hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()
    return KEY_PREFIX + digest


def _encode(verdict: Verdict) -> str:
    artwork = (
        verdict.artwork.model_dump(mode="json", exclude_none=True) if verdict.artwork else None
    )
    return json.dumps({"v": _FORMAT, "kind": verdict.kind, "artwork": artwork})


def _decode(raw: bytes | str) -> Verdict | None:
    try:
        body = json.loads(raw)
        if not isinstance(body, dict) or body.get("v") != _FORMAT:
            return None
        kind = body.get("kind")
        if kind == "no_match":
            return Verdict("no_match")
        if kind == "match" and isinstance(body.get("artwork"), dict):
            return Verdict("match", artwork=Artwork.model_validate(body["artwork"]))
    except (ValueError, ValidationError):
        pass
    return None


class LookupCache:
    def __init__(self, client: redis.Redis, ttl_s: float = 3600.0) -> None:
        if ttl_s <= 0:
            raise ValueError("the lookup cache needs a positive TTL")
        self.client = client
        self.ttl_ms = int(ttl_s * 1000)
        self._failing = False

    def get_many(self, keys: Collection[LookupKey]) -> dict[LookupKey, Verdict]:
        """The cached verdicts among `keys`, in one round trip."""
        if not keys:
            return {}
        ordered = list(keys)
        try:
            raw: Any = self.client.mget([cache_key(key) for key in ordered])
        except redis.RedisError as exc:
            self._failed(exc)
            return {}
        self._answered()
        found: dict[LookupKey, Verdict] = {}
        for key, value in zip(ordered, raw, strict=True):
            verdict = None if value is None else _decode(value)
            if verdict is not None:
                found[key] = verdict
        return found

    def put_many(self, verdicts: Mapping[LookupKey, Verdict]) -> int:
        """Store the terminal verdicts among `verdicts` (one round trip); returns how many."""
        kept = {key: v for key, v in verdicts.items() if v.kind in _CACHED_KINDS}
        if not kept:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for key, verdict in kept.items():
            pipe.set(cache_key(key), _encode(verdict), px=self.ttl_ms)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            self._failed(exc)
            return 0
        self._answered()
        return len(kept)

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            log.warning("LML lookup cache unavailable (%s); every lookup goes to LML", exc)
        self._failing = True

    def _answered(self) -> None:
        if self._failing:
            log.info("LML lookup cache available again")
        self._failing = False
