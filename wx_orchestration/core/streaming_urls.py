"""The station's streaming-URL guard (`streaming-url-guard.ts` in WXYC/Backend-Service). Pure.

A URL is kept only under the field whose service it names: the apps bind `spotify_url` to a
hard-wired "Spotify" button, and LML has sent Deezer links and Spotify *artist* pages there. The
same predicates guard what we write (at the LML answer) and what the feed shows (rows written
before the guard, or by anyone else).

- `spotify_url`: a Spotify host, and a release (`/album/<id>`, optionally behind an `intl-…`
  locale segment) or a search page (`/search…`, what a no-match writes).
- `apple_music_url`: an Apple host (path not checked: the station has measured no need).
- `youtube_music_url`, `soundcloud_url`: their hosts, well-formed http(s).
- `bandcamp_url`: well-formed http(s) only: labels run Bandcamp storefronts on their own domains.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def _has_parser_differential(url: str) -> bool:
    """Whitespace, control characters and backslashes make parsers disagree about the host: a
    string one parser reads as spotify.com another resolves elsewhere."""
    return any(ord(ch) <= 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in url)


def _host(url: object, *, strict: bool = False) -> str | None:
    if not isinstance(url, str) or "\\" in url or (strict and _has_parser_differential(url)):
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if not host or parts.scheme.lower() not in ("http", "https"):
        return None
    return host.lower()


def _under(host: str | None, apex: str) -> bool:
    # The leading dot refuses `spotify.com.evil.example`.
    return host is not None and (host == apex or host.endswith("." + apex))


def is_spotify_album_slot(url: object) -> bool:
    if not _under(_host(url), "spotify.com"):
        return False
    assert isinstance(url, str)
    segments = [s for s in urlsplit(url).path.split("/") if s]
    if segments and segments[0].lower().startswith("intl-"):
        segments = segments[1:]
    if segments[:1] == ["search"]:
        return True
    return len(segments) >= 2 and segments[0] == "album"


def is_apple_music_url(url: object) -> bool:
    return _under(_host(url), "apple.com")


def is_youtube_music_url(url: object) -> bool:
    host = _host(url, strict=True)
    return _under(host, "youtube.com") or _under(host, "youtu.be")


def is_bandcamp_url(url: object) -> bool:
    return _host(url, strict=True) is not None


def is_soundcloud_url(url: object) -> bool:
    return _under(_host(url, strict=True), "soundcloud.com")


GUARDS = {
    "spotify_url": is_spotify_album_slot,
    "apple_music_url": is_apple_music_url,
    "youtube_music_url": is_youtube_music_url,
    "bandcamp_url": is_bandcamp_url,
    "soundcloud_url": is_soundcloud_url,
}
# What the station's feed re-checks on rows already stored (the other three pass as stored).
FEED_GUARDS = {name: GUARDS[name] for name in ("spotify_url", "apple_music_url")}
