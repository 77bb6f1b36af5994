"""The LML HTTP client: typed answers, typed errors, one connection pool per process.

Usable without Dagster (the sidecar imports it directly). The API key travels only in the
`Authorization` header of each request: it is redacted from every error message and from the log
records of this module, httpx and httpcore, and never shows in a `repr`.

Latency accounting: every method takes an optional `stats` recorder whose `record(latency_ms)` is
called once per HTTP attempt (retries included), so a caller can total calls and latency for one run
while the client itself stays shared. `LmlCallStats` is a ready-made recorder.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, Protocol, Self, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ValidationError

from wx_orchestration.contracts.lml import (
    BULK_RESOLVE_PATH,
    DEFAULT_LML_RETRY_AFTER_CAP_S,
    HEALTH_PATH,
    LOOKUP_BULK_PATH,
    LOOKUP_PATH,
    MAX_BULK_RESOLVE_INPUTS,
    MAX_LOOKUP_BULK_ITEMS,
    BulkLookupRequest,
    BulkLookupResponse,
    BulkResolveInput,
    BulkResolveRequest,
    BulkResolveResponse,
    HealthResponse,
    LookupCaller,
    LookupItem,
    LookupResponse,
    normalize_lml_url,
)

LOGGER = logging.getLogger("wx_orchestration.lml")

LmlErrorKind = Literal[
    "timeout",
    "network",
    "http",
    "auth",
    "too_large",
    "invalid_response",
    "rate_limited",
    "endpoint_missing",
]
_RETRYABLE_KINDS = frozenset({"timeout", "network", "rate_limited"})

# A 1000-row bulk-resolve with tracks stays far below this; anything bigger is not LML talking.
_MAX_BODY_BYTES = 64 * 1024 * 1024
# Error bodies only feed a message snippet.
_MAX_ERROR_BODY_BYTES = 64 * 1024
_ERROR_SNIPPET_CHARS = 300
_BACKOFF_BASE_S = 0.2
_BACKOFF_CAP_S = 5.0
# The least time worth starting a retry with.
_MIN_ATTEMPT_S = 0.1
# Pauses longer than this are worth a line in the log.
_LONG_PAUSE_S = 60.0
# What an LML without an endpoint (an older version: it answers 404) costs us, for the one line
# that says so.
_WITHOUT_ENDPOINT = {
    LOOKUP_BULK_PATH: f"lookups fall back to one POST {LOOKUP_PATH} per item",
    BULK_RESOLVE_PATH: "library identity cannot run against this LML",
}

Model = TypeVar("Model", bound=BaseModel)


class LmlError(Exception):
    """A failed LML call. `retryable` defaults from `kind` and `status` when not given."""

    def __init__(
        self,
        message: str = "",
        *,
        kind: LmlErrorKind = "http",
        status: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        if retryable is None:
            retryable = kind in _RETRYABLE_KINDS or (
                kind == "http" and status is not None and status >= 500
            )
        super().__init__(message or f"LML call failed ({kind}, status {status})")
        self.kind: LmlErrorKind = kind
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class LmlCallRecorder(Protocol):
    def record(self, latency_ms: float) -> None: ...


class LmlApi(Protocol):
    """What callers need of LML: an `LmlClient`, or one drawing on the shared budget."""

    def bulk_resolve_libraries(
        self,
        inputs: Sequence[BulkResolveInput | Mapping[str, Any]],
        include_tracks: bool = False,
        *,
        stats: LmlCallRecorder | None = None,
    ) -> BulkResolveResponse: ...

    def lookup_bulk(
        self,
        items: Sequence[LookupItem | Mapping[str, Any]],
        *,
        stats: LmlCallRecorder | None = None,
    ) -> BulkLookupResponse: ...

    def health(self) -> HealthResponse: ...


@dataclass
class LmlCallStats:
    """Thread-safe totals of HTTP attempts, e.g. for `lml_total_calls`/`lml_total_latency_ms`."""

    calls: int = 0
    total_latency_ms: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, latency_ms: float) -> None:
        with self._lock:
            self.calls += 1
            self.total_latency_ms += latency_ms


class _SecretRedactor(logging.Filter):
    """Replaces registered API keys, in the forms a server or a library could echo them."""

    def __init__(self) -> None:
        super().__init__()
        self._forms: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def register(self, secret: str) -> None:
        forms = {secret, json.dumps(secret)[1:-1], quote(secret, safe="")}
        with self._lock:
            self._forms = self._forms | forms

    def redact(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, "[redacted]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._forms:
            message = record.getMessage()
            clean = self.redact(message)
            if clean != message:
                record.msg, record.args = clean, None
        return True


_REDACTOR = _SecretRedactor()
# Logger filters only see records created on that exact logger, hence the explicit list. httpcore's
# DEBUG traces print response headers, which a misbehaving server may use to echo our key.
for _logger_name in (
    LOGGER.name,
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
):
    logging.getLogger(_logger_name).addFilter(_REDACTOR)


@dataclass
class _Pool:
    client: httpx.Client
    users: int = 0


# One pool per base URL per process: connection reuse is what makes LML calls fast (a client per
# call measured 50x slower). Keys and timeouts are per request, so they need no pool of their own.
_pools: dict[str, _Pool] = {}
_pools_lock = threading.Lock()


def _acquire_pool(base_url: str) -> httpx.Client:
    with _pools_lock:
        pool = _pools.get(base_url)
        if pool is None or pool.client.is_closed:
            pool = _pools[base_url] = _Pool(httpx.Client(base_url=base_url))
        pool.users += 1
        return pool.client


def _release_pool(base_url: str, client: httpx.Client) -> None:
    with _pools_lock:
        pool = _pools.get(base_url)
        if pool is None or pool.client is not client:
            return
        pool.users -= 1
        if pool.users <= 0:
            del _pools[base_url]
            client.close()


def _forget_pools_in_child() -> None:
    # Sockets inherited through fork belong to the parent; the child must open its own.
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools_in_child)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or HTTP-date), else None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True)
class _Extra:
    """What a lookup adds to its request: the caller's headers and query parameters."""

    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Exchange:
    status: int
    headers: httpx.Headers
    body: bytes


class LmlClient:
    """Synchronous, thread-safe LML client sharing one process-wide `httpx.Client` per base URL.

    `total_timeout` bounds each method call including retries and backoff; retryable errors
    (timeouts, network errors, 5xx, 429) are retried at most `max_retries` times (default none:
    behind the shared budget every attempt must queue for its own slot), honouring
    `Retry-After` up to `retry_after_cap_s`, and never past that deadline.

    The base URL is read as the station's client reads `LIBRARY_METADATA_URL` (a trailing
    `/api/v1` or slash is dropped). Lookups carry their caller's headers and query parameter
    (`caller` unless a call names its own). An
    endpoint that answers 404 is said once to be missing (an older LML) and is not asked again
    by this client: its calls raise `endpoint_missing` without sending.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str = "",
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        total_timeout: float = 60.0,
        max_retries: int = 0,
        *,
        caller: LookupCaller | None = None,
        retry_after_cap_s: float = DEFAULT_LML_RETRY_AFTER_CAP_S,
    ) -> None:
        base_url = normalize_lml_url(base_url)
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"LML base URL must be http(s), got {base_url!r}")
        if min(connect_timeout, read_timeout, total_timeout) <= 0:
            raise ValueError("LML timeouts must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if retry_after_cap_s < 0:
            raise ValueError("retry_after_cap_s must be >= 0")
        self.base_url = base_url
        # What error lines show: the base URL without any user or password in it.
        parts = urlsplit(base_url)
        self._shown_url = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))
        self.caller = caller
        self.retry_after_cap_s = retry_after_cap_s
        self._missing: set[str] = set()
        self._missing_lock = threading.Lock()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        self.max_retries = max_retries
        # httpx.Headers masks `authorization` in its repr, so even vars(client) stays clean.
        self._headers = httpx.Headers(
            {"Accept": "application/json", "Content-Type": "application/json"}
        )
        if api_key:
            _REDACTOR.register(api_key)
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._http = _acquire_pool(self.base_url)
        self._closed = False
        self._close_lock = threading.Lock()

    def __repr__(self) -> str:
        key_state = "set" if "authorization" in self._headers else "empty"
        return (
            f"LmlClient(base_url={self.base_url!r}, api_key=<{key_state}>, "
            f"total_timeout={self.total_timeout}, max_retries={self.max_retries})"
        )

    @property
    def http_client(self) -> httpx.Client:
        """The process-wide pooled client this instance sends through."""
        return self._http

    def close(self) -> None:
        """Release this instance's share of the pool; the last user closes it."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        _release_pool(self.base_url, self._http)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def bulk_resolve_libraries(
        self,
        inputs: Sequence[BulkResolveInput | Mapping[str, Any]],
        include_tracks: bool = False,
        *,
        stats: LmlCallRecorder | None = None,
    ) -> BulkResolveResponse:
        if not inputs:
            raise ValueError("bulk_resolve_libraries needs at least one input")
        if len(inputs) > MAX_BULK_RESOLVE_INPUTS:
            raise LmlError(
                f"{len(inputs)} inputs exceed LML's limit of {MAX_BULK_RESOLVE_INPUTS} per "
                "bulk-resolve call; nothing was sent",
                kind="too_large",
                retryable=False,
            )
        request = BulkResolveRequest.model_validate(
            {"inputs": list(inputs), "include_tracks": include_tracks}
        )
        payload = request.model_dump_json().encode()
        return self._call(
            "POST", BULK_RESOLVE_PATH, payload, BulkResolveResponse, len(inputs), stats
        )

    def lookup_bulk(
        self,
        items: Sequence[LookupItem | Mapping[str, Any]],
        *,
        stats: LmlCallRecorder | None = None,
        caller: LookupCaller | None = None,
    ) -> BulkLookupResponse:
        if not items:
            raise ValueError("lookup_bulk needs at least one item")
        if len(items) > MAX_LOOKUP_BULK_ITEMS:
            raise LmlError(
                f"{len(items)} items exceed LML's limit of {MAX_LOOKUP_BULK_ITEMS} per bulk "
                "lookup; nothing was sent",
                kind="too_large",
                retryable=False,
            )
        request = BulkLookupRequest.model_validate({"items": list(items)})
        payload = request.model_dump_json(exclude_none=True).encode()
        return self._call(
            "POST",
            LOOKUP_BULK_PATH,
            payload,
            BulkLookupResponse,
            len(items),
            stats,
            caller=caller or self.caller,
        )

    def lookup(
        self,
        item: LookupItem | Mapping[str, Any],
        *,
        stats: LmlCallRecorder | None = None,
        caller: LookupCaller | None = None,
    ) -> LookupResponse:
        payload = LookupItem.model_validate(item).model_dump_json(exclude_none=True).encode()
        return self._call(
            "POST", LOOKUP_PATH, payload, LookupResponse, 1, stats, caller=caller or self.caller
        )

    def health(self, *, stats: LmlCallRecorder | None = None) -> HealthResponse:
        return self._call("GET", HEALTH_PATH, None, HealthResponse, 0, stats)

    def lacks(self, path: str) -> bool:
        """Whether this LML answered 404 for `path` (an endpoint older LMLs do not have)."""
        with self._missing_lock:
            return path in self._missing

    def url(self, path: str) -> str:
        """The absolute URL of `path`, as error lines name it (never with a password)."""
        return self._shown_url + path

    def _call(
        self,
        method: str,
        path: str,
        payload: bytes | None,
        model: type[Model],
        items: int,
        stats: LmlCallRecorder | None,
        *,
        caller: LookupCaller | None = None,
    ) -> Model:
        if self._closed:
            raise RuntimeError("LmlClient is closed")
        if self.lacks(path):
            raise LmlError(
                f"LML {method} {self.url(path)}: this LML has no such endpoint (it answered 404)",
                kind="endpoint_missing",
                status=404,
            )
        extra = _Extra() if caller is None else _Extra(caller.headers(), caller.params())
        deadline = time.monotonic() + self.total_timeout
        attempt = 0
        while True:
            try:
                return self._attempt(method, path, payload, model, items, deadline, stats, extra)
            except LmlError as err:
                delay = self._retry_delay(err, attempt, deadline)
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1

    def _retry_delay(self, err: LmlError, attempt: int, deadline: float) -> float | None:
        if not err.retryable or attempt >= self.max_retries:
            return None
        # Jitter spreads retries of many workers hit by the same outage; not security relevant.
        backoff = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**attempt) * (0.5 + random.random() / 2)  # noqa: S311
        delay = max(backoff, err.retry_after or 0.0)
        # A retry left a few milliseconds can only time out, and would report that instead of
        # what LML actually said.
        if time.monotonic() + delay + _MIN_ATTEMPT_S >= deadline:
            return None
        return delay

    def _attempt(
        self,
        method: str,
        path: str,
        payload: bytes | None,
        model: type[Model],
        items: int,
        deadline: float,
        stats: LmlCallRecorder | None,
        extra: _Extra,
    ) -> Model:
        started = time.perf_counter()
        outcome: Model | LmlError
        status: int | None = None
        url = self.url(path)
        try:
            exchange = self._exchange(method, path, payload, deadline, extra)
        except LmlError as err:
            outcome, label = err, err.kind
        else:
            status = label = exchange.status
            if status // 100 == 2:
                outcome = _parse(model, exchange, method, url)
            else:
                outcome = _status_error(exchange, method, url)
        latency_ms = (time.perf_counter() - started) * 1000.0
        if stats is not None:
            stats.record(latency_ms)
        if isinstance(outcome, LmlError) and outcome.retry_after is not None:
            outcome.retry_after = self._pause_for(outcome.retry_after, method, url)
        missing = isinstance(outcome, LmlError) and outcome.kind == "endpoint_missing"
        if missing:
            self._mark_missing(method, path)
        refused = isinstance(outcome, LmlError) and outcome.kind == "auth"
        LOGGER.log(
            # A missing endpoint has its own line (`_mark_missing`), said once.
            logging.WARNING if isinstance(outcome, LmlError) and not missing else logging.DEBUG,
            "LML %s %s items=%d -> %s in %.1f ms%s",
            method,
            url,
            items,
            label,
            latency_ms,
            # The one line a refused key gets: callers add none of their own.
            "; LML refused our API key, check LML_API_KEY" if refused else "",
            extra={
                "lml_method": method,
                "lml_path": path,
                "lml_status": status,
                "lml_latency_ms": latency_ms,
            },
        )
        # Raised here, outside any `except`, so no exception carrying server text is chained on.
        if isinstance(outcome, LmlError):
            raise outcome
        return outcome

    def _pause_for(self, asked_s: float, method: str, url: str) -> float:
        """LML's `Retry-After`, capped; a long pause (or a capped one) is said with its length."""
        pause_s = min(asked_s, self.retry_after_cap_s)
        if pause_s > _LONG_PAUSE_S or pause_s < asked_s:
            capped = (
                f", capped at LML_RETRY_AFTER_CAP_S={self.retry_after_cap_s:g}s"
                if pause_s < asked_s
                else ""
            )
            LOGGER.warning(
                "LML %s %s asked us to wait %gs (Retry-After)%s: LML calls pause for %gs",
                method,
                url,
                asked_s,
                capped,
                pause_s,
                extra={"lml_retry_after_s": asked_s, "lml_pause_s": pause_s},
            )
        return pause_s

    def _mark_missing(self, method: str, path: str) -> None:
        with self._missing_lock:
            first = path not in self._missing
            self._missing.add(path)
        if first:
            LOGGER.error(
                "LML at %s has no %s %s (it answered 404: an LML older than this endpoint); %s",
                self._shown_url,
                method,
                path,
                _WITHOUT_ENDPOINT.get(path, "calls to it fail"),
                extra={"lml_missing_endpoint": path},
            )

    def _exchange(
        self, method: str, path: str, payload: bytes | None, deadline: float, extra: _Extra
    ) -> _Exchange:
        url = self.url(path)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LmlError(
                f"LML {method} {url}: total timeout spent before sending", kind="timeout"
            )
        timeout = httpx.Timeout(
            connect=min(self.connect_timeout, remaining),
            read=min(self.read_timeout, remaining),
            write=min(self.read_timeout, remaining),
            pool=min(self.connect_timeout, remaining),
        )
        failure: str | None = None
        kind: LmlErrorKind = "network"
        try:
            with self._http.stream(
                method,
                path,
                content=payload,
                params=extra.params,
                headers={**self._headers, **extra.headers},
                timeout=timeout,
            ) as response:
                return _Exchange(
                    response.status_code,
                    response.headers,
                    _read_body(response, deadline, method, url),
                )
        except httpx.TimeoutException as exc:
            kind, failure = "timeout", _describe_exception(exc)
        except httpx.DecodingError as exc:
            kind, failure = "invalid_response", _describe_exception(exc)
        except httpx.HTTPError as exc:
            kind, failure = "network", _describe_exception(exc)
        # The httpx exception is described, not chained: its text can quote the server's bytes.
        raise LmlError(f"LML {method} {url} failed: {failure}", kind=kind)


def _read_body(response: httpx.Response, deadline: float, method: str, url: str) -> bytes:
    """Reads the body, enforcing the call's deadline between chunks (httpx has no total timeout)."""
    limit = _MAX_BODY_BYTES if response.is_success else _MAX_ERROR_BODY_BYTES
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        if time.monotonic() > deadline:
            raise LmlError(f"LML {method} {url}: total timeout while reading", kind="timeout")
        size += len(chunk)
        if size > limit:
            if response.is_success:
                raise LmlError(
                    f"LML {method} {url}: body larger than {limit} bytes",
                    kind="invalid_response",
                    status=response.status_code,
                    retryable=False,
                )
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _describe_exception(exc: BaseException) -> str:
    text = str(exc) or "no detail"
    return _REDACTOR.redact(f"{type(exc).__name__}: {text}")


def _parse(model: type[Model], exchange: _Exchange, method: str, url: str) -> Model | LmlError:
    try:
        return model.model_validate_json(exchange.body)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        problem = _REDACTOR.redact(f"{first['type']} at {where} ({exc.error_count()} errors)")
    return LmlError(
        f"LML {method} {url} answered {exchange.status} with a body that is not a valid "
        f"{model.__name__}: {problem}",
        kind="invalid_response",
        status=exchange.status,
        retryable=False,
    )


def _status_error(exchange: _Exchange, method: str, url: str) -> LmlError:
    status = exchange.status
    snippet = " ".join(_REDACTOR.redact(exchange.body.decode("utf-8", "replace")).split())
    message = f"LML {method} {url} answered HTTP {status}: {snippet[:_ERROR_SNIPPET_CHARS]}"
    retry_after = parse_retry_after(exchange.headers.get("retry-after"))
    if status in (401, 403):
        return LmlError(message, kind="auth", status=status, retryable=False)
    if status == 404:
        return LmlError(message, kind="endpoint_missing", status=status, retryable=False)
    if status == 413:
        return LmlError(message, kind="too_large", status=status, retryable=False)
    if status == 429:
        return LmlError(
            message, kind="rate_limited", status=status, retryable=True, retry_after=retry_after
        )
    return LmlError(
        message, kind="http", status=status, retryable=status >= 500, retry_after=retry_after
    )
