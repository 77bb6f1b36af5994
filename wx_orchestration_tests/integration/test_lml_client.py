"""The LML client against the emulator and against small servers that misbehave on purpose."""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from wx_orchestration.clients.lml import LmlCallStats, LmlClient, LmlError
from wx_orchestration.contracts.lml import BulkResolveInput, LookupItem
from wx_orchestration.devstack.lml_emulator import (
    METHODS,
    SERVER_HEADER,
    EmulatorHandle,
    start_in_thread,
)
from wx_orchestration.devstack.processes import wait_until

SECRET = "sk-test-SECRET-9f8e7d"

Responder = Callable[[socket.socket, bytes], None]


class RawServer:
    """A bare TCP server answering each HTTP request with whatever bytes `respond` writes."""

    def __init__(self, respond: Responder) -> None:
        self._respond = respond
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.requests: list[bytes] = []
        self.stopped = threading.Event()
        self._connections: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept_loop)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self._connections.append(connection)
            self._spawn(self._serve, connection)

    def _serve(self, connection: socket.socket) -> None:
        buffer = b""
        try:
            while not self.stopped.is_set():
                while b"\r\n\r\n" not in buffer:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += connection.recv(65536)
                request, buffer = head + b"\r\n\r\n" + buffer[:length], buffer[length:]
                self.requests.append(request)
                self._respond(connection, request)
        except OSError:
            return

    def close(self) -> None:
        self.stopped.set()
        # shutdown(), unlike close(), wakes threads blocked in accept() or recv().
        for sock in (self._listener, *self._connections):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5)


def http_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def canned(status: int, body: bytes = b"{}", headers: dict[str, str] | None = None) -> Responder:
    def respond(connection: socket.socket, request: bytes) -> None:
        connection.sendall(http_response(status, body, headers))

    return respond


def authorization_of(request: bytes) -> str:
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.lower() == b"authorization":
            return value.strip().decode()
    return ""


@pytest.fixture
def raw_server() -> Iterator[Callable[[Responder], RawServer]]:
    servers: list[RawServer] = []

    def start(respond: Responder) -> RawServer:
        server = RawServer(respond)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def secured_emulator() -> Iterator[EmulatorHandle]:
    handle = start_in_thread(api_key=SECRET)
    yield handle
    handle.stop()


def client_for(url: str, **options: float) -> LmlClient:
    settings: dict[str, float] = {
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
        "total_timeout": 5.0,
        "max_retries": 0,
        **options,
    }
    return LmlClient(
        url,
        connect_timeout=settings["connect_timeout"],
        read_timeout=settings["read_timeout"],
        total_timeout=settings["total_timeout"],
        max_retries=int(settings["max_retries"]),
    )


def library_inputs(count: int) -> list[BulkResolveInput]:
    return [
        BulkResolveInput(
            library_id=n,
            artist_name=f"Artist {n}",
            album_title=f"Album {n}",
            legacy_release_id=100_000 + n,
        )
        for n in range(1, count + 1)
    ]


def call_error(call: Callable[[], object]) -> LmlError:
    with pytest.raises(LmlError) as caught:
        call()
    return caught.value


# --- against the emulator ------------------------------------------------------------------------


def test_bulk_resolve_answers_in_input_order(lml_client: LmlClient) -> None:
    inputs = [
        {"library_id": 30, "artist_name": "Stereolab", "album_title": "Emperor Tomato Ketchup",
         "legacy_release_id": 1},
        {"library_id": 10, "artist_name": "Various Artists", "album_title": "Nuggets",
         "legacy_release_id": 2},
        {"library_id": 20, "artist_name": "V/A", "album_title": "Studio One Rockers",
         "legacy_release_id": 3},
    ]  # fmt: skip

    response = lml_client.bulk_resolve_libraries(inputs)

    assert [result.library_id for result in response.results] == [30, 10, 20]
    assert [result.kind for result in response.results][1:] == ["compilation", "compilation"]
    # As a current LML: null, even for compilations.
    assert response.tracks_contract_version is None


def test_emulator_answers_look_like_lml(lml_client: LmlClient) -> None:
    results = lml_client.bulk_resolve_libraries(library_inputs(1000)).results

    kinds = [result.kind for result in results]
    assert 50 <= kinds.count("unresolved") <= 150
    singles = [result for result in results if result.kind == "single_artist"]
    for result in singles:
        assert result.method in METHODS
        assert result.confidence is not None
        assert 0.6 <= result.confidence <= 1.0
        assert 1 <= len(result.provenance) <= 4
        assert result.main is not None
        assert result.main.wikidata_qid is not None
        assert result.main.wikidata_qid.startswith("Q")
    assert any(p.confidence is None for r in singles for p in r.provenance)

    items = [LookupItem(artist=f"Artist {n}", album=f"Album {n}") for n in range(100)]
    statuses = [result.status for result in lml_client.lookup_bulk(items).results]
    assert 60 <= statuses.count("match") <= 90
    assert set(statuses) == {"match", "no_match"}


def test_emulator_is_deterministic_across_calls_and_instances(lml_client: LmlClient) -> None:
    inputs = library_inputs(50)
    items = [LookupItem(artist=f"Artist {n}", song=f"Song {n}") for n in range(50)]
    first = (lml_client.bulk_resolve_libraries(inputs), lml_client.lookup_bulk(items))

    with start_in_thread() as other, client_for(other.url) as other_client:
        second = (other_client.bulk_resolve_libraries(inputs), other_client.lookup_bulk(items))

    assert first[0] == second[0]
    assert first[1] == second[1]


def test_lookup_match_carries_artwork(lml_client: LmlClient) -> None:
    items = [LookupItem(artist=f"Band {n}", album="LP") for n in range(40)]
    first_match = next(r for r in lml_client.lookup_bulk(items).results if r.status == "match")

    single = lml_client.lookup(items[first_match.index])

    assert single == first_match.lookup
    assert single.search_type == "direct"
    artwork = single.results[0].artwork
    assert artwork is not None
    assert artwork.artwork_url is not None
    assert artwork.artwork_url.startswith("https://img.emulator.invalid/")
    assert artwork.release_url == f"https://www.discogs.com/release/{artwork.release_id}"


def test_blank_artist_is_an_item_error(lml_client: LmlClient) -> None:
    response = lml_client.lookup_bulk([{"artist": "Can"}, {"artist": "   "}])

    assert [result.index for result in response.results] == [0, 1]
    assert response.results[1].status == "error"
    assert response.results[1].lookup is None


def test_health_reports_breaker_state(lml_emulator: EmulatorHandle, lml_client: LmlClient) -> None:
    assert lml_client.health().discogs_breaker_state == "closed"

    lml_emulator.set_faults(breaker_state="open")

    assert lml_client.health().discogs_breaker_state == "open"
    raw = httpx.get(lml_emulator.url + "/health")
    assert raw.json()["emulator"] is True
    assert raw.headers["server"] == SERVER_HEADER


def test_too_many_inputs_are_refused_before_sending(
    lml_emulator: EmulatorHandle, lml_client: LmlClient
) -> None:
    err = call_error(lambda: lml_client.bulk_resolve_libraries(library_inputs(1001)))
    lookup_err = call_error(lambda: lml_client.lookup_bulk([{"artist": "a"}] * 101))

    assert (err.kind, err.retryable, err.status) == ("too_large", False, None)
    assert (lookup_err.kind, lookup_err.retryable) == ("too_large", False)
    with pytest.raises(ValueError, match="at least one"):
        lml_client.bulk_resolve_libraries([])
    assert lml_emulator.requests() == []


def test_emulator_itself_refuses_oversized_and_invalid_bodies(
    lml_emulator: EmulatorHandle,
) -> None:
    inputs = [item.model_dump() for item in library_inputs(1001)]
    url = lml_emulator.url + "/api/v1/identity/bulk-resolve-libraries"

    assert httpx.post(url, json={"inputs": inputs}).status_code == 413
    assert httpx.post(url, json={"inputs": [{"library_id": "x"}]}).status_code == 422
    assert httpx.post(url, content=b"not json").status_code == 422
    lookup_bulk = lml_emulator.url + "/api/v1/lookup/bulk"
    assert httpx.post(lookup_bulk, json={"items": [{"artist": "a"}] * 101}).status_code == 413
    logged = [(entry["items"], entry["status"]) for entry in lml_emulator.requests()]
    assert logged == [(1001, 413), (1, 422), (0, 422), (101, 413)]


def test_emulator_auth(secured_emulator: EmulatorHandle) -> None:
    with client_for(secured_emulator.url) as anonymous:
        missing = call_error(lambda: anonymous.lookup({"artist": "Can"}))
    with LmlClient(secured_emulator.url, api_key="wrong-key", max_retries=0) as wrong:
        refused = call_error(lambda: wrong.lookup({"artist": "Can"}))
    with LmlClient(secured_emulator.url, api_key=SECRET, max_retries=0) as right:
        assert right.lookup({"artist": "Can"}).search_type in {"direct", "none"}

    assert (missing.kind, missing.status, missing.retryable) == ("auth", 401, False)
    assert (refused.kind, refused.status, refused.retryable) == ("auth", 403, False)


def test_emulator_without_key_accepts_any_header(lml_emulator: EmulatorHandle) -> None:
    with LmlClient(lml_emulator.url, api_key="whatever", max_retries=0) as client:
        assert client.health().status == "ok"
        assert client.lookup({"artist": "Can"}) is not None


def test_degraded_is_not_a_no_match(lml_emulator: EmulatorHandle, lml_client: LmlClient) -> None:
    lml_emulator.set_faults(degraded=True)
    single = lml_client.lookup({"artist": "Can"})
    limited = lml_client.lookup_bulk([{"artist": "Can"}])
    lml_emulator.set_faults(breaker_state="open")
    broken = lml_client.lookup_bulk([{"artist": "Can"}])

    assert (single.degraded, single.degraded_reason, single.results) == (
        True,
        "upstream_unavailable",
        [],
    )
    assert limited.results[0].status == "shed_limiter_saturated"
    assert broken.results[0].status == "shed_breaker_open"


def test_cardinality_faults(lml_emulator: EmulatorHandle, lml_client: LmlClient) -> None:
    inputs = library_inputs(3)
    lml_emulator.set_faults(short_results=True)
    short = lml_client.bulk_resolve_libraries(inputs)
    lml_emulator.set_faults(short_results=False, foreign_results=True, duplicate_results=True)
    padded = lml_client.bulk_resolve_libraries(inputs)

    assert [r.library_id for r in short.results] == [1, 2]
    assert [r.library_id for r in padded.results] == [1, 2, 3, 1_000_003, 1]


def test_injected_errors_and_malformed_bodies(
    lml_emulator: EmulatorHandle, lml_client: LmlClient
) -> None:
    lml_emulator.set_faults(error_rate=1.0)
    failure = call_error(lambda: lml_client.lookup({"artist": "Can"}))
    lml_emulator.set_faults(error_rate=0.0, malformed=1.0)
    garbled = call_error(lambda: lml_client.lookup({"artist": "Can"}))

    assert failure.kind == "http"
    assert failure.status in {500, 503}
    assert failure.retryable
    assert (garbled.kind, garbled.status, garbled.retryable) == ("invalid_response", 200, False)


def test_seeded_faults_repeat(lml_emulator: EmulatorHandle, lml_client: LmlClient) -> None:
    def outcomes() -> list[str]:
        seen = []
        for _ in range(20):
            try:
                lml_client.health()
                lml_client.lookup({"artist": "Can"})
                seen.append("ok")
            except LmlError as err:
                seen.append(f"{err.kind}:{err.status}")
        return seen

    lml_emulator.set_faults(seed=7, error_rate=0.5)
    first = outcomes()
    lml_emulator.set_faults(seed=7)
    second = outcomes()

    assert first == second
    assert "ok" in first
    assert any(outcome.startswith("http:") for outcome in first)


def test_faults_over_http(lml_emulator: EmulatorHandle) -> None:
    faults_url = lml_emulator.url + "/_emulator/faults"

    changed = httpx.post(faults_url, json={"latency_ms": 1, "rate_limit": 2}).json()
    rejected = httpx.post(faults_url, json={"no_such_fault": 1})

    assert (changed["latency_ms"], changed["rate_limit"]) == (1.0, 2)
    assert rejected.status_code == 422
    assert lml_emulator.faults().rate_limit == 2
    assert httpx.delete(faults_url).json()["rate_limit"] == 0


def test_request_log_clears_over_http(lml_emulator: EmulatorHandle, lml_client: LmlClient) -> None:
    lml_client.lookup_bulk([{"artist": "a"}, {"artist": "b"}])
    log_url = lml_emulator.url + "/_emulator/requests"

    entries = httpx.get(log_url).json()
    assert [(e["method"], e["path"], e["items"], e["status"]) for e in entries] == [
        ("POST", "/api/v1/lookup/bulk", 2, 200)
    ]
    assert httpx.delete(log_url).status_code == 204
    assert lml_emulator.requests() == []


def test_retries_recover_from_rate_limits(lml_emulator: EmulatorHandle) -> None:
    lml_emulator.set_faults(rate_limit=2, retry_after=0)
    stats = LmlCallStats()

    with client_for(lml_emulator.url, max_retries=3) as client:
        response = client.lookup({"artist": "Can"}, stats=stats)

    assert response.search_type in {"direct", "none"}
    assert [entry["status"] for entry in lml_emulator.requests()] == [429, 429, 200]
    assert stats.calls == 3
    assert stats.total_latency_ms > 0


def test_clients_share_one_pool() -> None:
    # Its own emulator: a URL no other test's client holds, so the last close() is ours.
    with start_in_thread() as emulator:
        first = client_for(emulator.url)
        second = client_for(emulator.url + "/")
        pooled = first.http_client

        first.health()
        first.lookup({"artist": "Can"})
        first.close()
        second.health()

        assert first.http_client is pooled
        assert second.http_client is pooled
        assert not pooled.is_closed
        second.close()
        assert pooled.is_closed


def test_command_line_prints_its_url() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "wx_orchestration.devstack.lml_emulator", "--port", "0",
         "--latency-ms", "1", "--breaker-state", "half_open"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=30), "emulator printed no URL"
        url = process.stdout.readline().decode().strip()
        health = httpx.get(url + "/health", timeout=10).json()
    finally:
        process.terminate()
        process.wait(10)

    assert url.startswith("http://127.0.0.1:")
    assert health["discogs_breaker_state"] == "half_open"


# --- against misbehaving servers ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "retryable"),
    [
        (500, "http", True),
        (503, "http", True),
        (401, "auth", False),
        (403, "auth", False),
        (413, "too_large", False),
        (422, "http", False),
        (404, "endpoint_missing", False),
    ],
)
def test_status_mapping(
    raw_server: Callable[[Responder], RawServer], status: int, kind: str, retryable: bool
) -> None:
    server = raw_server(canned(status, b'{"detail": "nope"}'))

    with client_for(server.url) as client:
        err = call_error(lambda: client.lookup({"artist": "Can"}))

    assert (err.kind, err.status, err.retryable) == (kind, status, retryable)
    assert "nope" in str(err)
    assert len(server.requests) == 1


def test_rate_limited_with_retry_after_seconds(
    raw_server: Callable[[Responder], RawServer],
) -> None:
    server = raw_server(canned(429, b"slow down", {"Retry-After": "2"}))

    with client_for(server.url) as client:
        err = call_error(lambda: client.health())

    assert (err.kind, err.status, err.retryable, err.retry_after) == (
        "rate_limited",
        429,
        True,
        2.0,
    )


def test_retry_after_as_http_date(raw_server: Callable[[Responder], RawServer]) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    server = raw_server(canned(503, b"", {"Retry-After": later}))

    with client_for(server.url) as client:
        err = call_error(lambda: client.health())

    assert err.retry_after is not None
    assert 25 <= err.retry_after <= 31


@pytest.mark.parametrize(
    "body",
    [b"<html>gateway</html>", b'{"results": [{"kind": "duo", "library_id": 1}]}', b"[]"],
    ids=["not-json", "bad-kind", "wrong-shape"],
)
def test_invalid_bodies(raw_server: Callable[[Responder], RawServer], body: bytes) -> None:
    server = raw_server(canned(200, body))

    with client_for(server.url, max_retries=3) as client:
        err = call_error(lambda: client.bulk_resolve_libraries(library_inputs(1)))

    assert (err.kind, err.status, err.retryable) == ("invalid_response", 200, False)
    assert len(server.requests) == 1


def test_server_that_never_answers_times_out(
    raw_server: Callable[[Responder], RawServer],
) -> None:
    hang_up = threading.Event()

    def never_answer(connection: socket.socket, request: bytes) -> None:
        hang_up.wait(10)

    server = raw_server(never_answer)

    with client_for(server.url, read_timeout=0.3, total_timeout=1.0) as client:
        started = time.monotonic()
        err = call_error(lambda: client.lookup({"artist": "Can"}))

    assert (err.kind, err.status, err.retryable) == ("timeout", None, True)
    assert time.monotonic() - started < 1.0
    hang_up.set()


def test_closed_port_is_a_network_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with client_for(f"http://127.0.0.1:{port}") as client:
        err = call_error(lambda: client.health())

    assert (err.kind, err.status, err.retryable) == ("network", None, True)


def test_connection_closed_mid_response(raw_server: Callable[[Responder], RawServer]) -> None:
    def truncate(connection: socket.socket, request: bytes) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b'{"results": [')
        connection.shutdown(socket.SHUT_RDWR)

    server = raw_server(truncate)

    with client_for(server.url) as client:
        err = call_error(lambda: client.bulk_resolve_libraries(library_inputs(1)))

    assert (err.kind, err.retryable) == ("network", True)


def test_retries_stay_within_total_timeout(raw_server: Callable[[Responder], RawServer]) -> None:
    server = raw_server(canned(503, b"down"))

    with client_for(server.url, total_timeout=1.0, max_retries=50) as client:
        started = time.monotonic()
        err = call_error(lambda: client.health())
        elapsed = time.monotonic() - started

    assert (err.kind, err.status) == ("http", 503)
    assert len(server.requests) > 1
    assert elapsed <= 1.2


def test_never_sleeps_past_the_deadline_for_retry_after(
    raw_server: Callable[[Responder], RawServer],
) -> None:
    server = raw_server(canned(429, b"", {"Retry-After": "30"}))

    with client_for(server.url, total_timeout=2.0, max_retries=5) as client:
        started = time.monotonic()
        err = call_error(lambda: client.health())

    assert (err.kind, err.retry_after) == ("rate_limited", 30.0)
    assert len(server.requests) == 1
    assert time.monotonic() - started < 1.0


# --- the API key ---------------------------------------------------------------------------------


def _echo_key(status: int, body_template: bytes) -> Responder:
    def respond(connection: socket.socket, request: bytes) -> None:
        echoed = authorization_of(request).encode()
        body = body_template.replace(b"KEY", echoed)
        connection.sendall(http_response(status, body, {"X-Echo": echoed.decode()}))

    return respond


def _assert_no_secret(err: BaseException) -> None:
    chain: BaseException | None = err
    while chain is not None:
        for text in (str(chain), repr(chain), repr(chain.args)):
            assert SECRET not in text
        chain = chain.__cause__ or chain.__context__


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b'{"detail": "bad auth header: KEY"}'),
        (401, b"KEY"),
        (429, b"you sent KEY"),
        (200, b"<html>KEY</html>"),
        (200, b'{"results": [{"kind": "KEY", "library_id": "KEY"}]}'),
    ],
    ids=["5xx-json", "401", "429", "200-not-json", "200-schema-invalid"],
)
def test_api_key_never_leaks(
    raw_server: Callable[[Responder], RawServer],
    caplog: pytest.LogCaptureFixture,
    status: int,
    body: bytes,
) -> None:
    for name in (None, "httpx", "httpcore", "wx_orchestration.lml"):
        caplog.set_level(logging.DEBUG, logger=name)
    server = raw_server(_echo_key(status, body))
    client = LmlClient(
        server.url, api_key=SECRET, read_timeout=2.0, total_timeout=5.0, max_retries=1
    )

    err = call_error(lambda: client.bulk_resolve_libraries(library_inputs(2)))
    client.close()

    assert authorization_of(server.requests[0]) == f"Bearer {SECRET}"
    _assert_no_secret(err)
    assert SECRET not in repr(client)
    assert SECRET not in repr(vars(client))
    assert SECRET not in caplog.text
    assert all(SECRET not in record.getMessage() for record in caplog.records)
    # httpcore's DEBUG trace logged the echoing header, redacted.
    assert "[redacted]" in caplog.text


def test_no_authorization_header_without_a_key(
    raw_server: Callable[[Responder], RawServer],
) -> None:
    server = raw_server(canned(200, b'{"status": "ok"}'))

    with client_for(server.url) as client:
        assert client.health().status == "ok"

    assert authorization_of(server.requests[0]) == ""
    assert "api_key=<empty>" in repr(client)


def test_the_emulator_logs_a_call_whose_client_timed_out(lml_emulator: EmulatorHandle) -> None:
    lml_emulator.set_faults(latency_ms=1500)
    client = LmlClient(lml_emulator.url, read_timeout=0.2, total_timeout=0.5, max_retries=0)
    with pytest.raises(LmlError) as info:
        client.lookup_bulk([{"artist": "Can"}])
    assert info.value.kind == "timeout"
    client.close()
    wait_until(
        lambda: any(r["path"] == "/api/v1/lookup/bulk" for r in lml_emulator.requests()),
        timeout=10,
        what="the abandoned call in the emulator's log",
    )
