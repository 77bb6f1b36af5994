"""A connection's Subscription: the opening frames go first, and nothing is sent once closed."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry, Counter
from starlette.types import Message

from wx_orchestration.sidecar.live.fanout import Subscription


def subscription() -> Subscription:
    waited = Counter("writes_waited", "test", registry=CollectorRegistry())
    return Subscription(1 << 20, (0, 0), waited)


def test_the_opening_goes_before_what_queued_while_it_was_built() -> None:
    sent: list[bytes] = []

    async def send(message: Message) -> None:
        sent.append(message["body"])

    async def scenario() -> None:
        sub = subscription()
        sub.offer([((1, 0), b"one\n\n")], b"one\n\n")
        sub.open(send, b"opening\n\n")
        assert sub.writer is not None
        await sub.writer
        sub.offer([((2, 0), b"two\n\n")], b"two\n\n")  # caught up: written on the spot

    asyncio.run(scenario())
    assert sent == [b"opening\n\none\n\n", b"two\n\n"]


def test_a_replay_goes_page_by_page_before_what_queued_meanwhile() -> None:
    sent: list[bytes] = []
    pages_read: list[int] = []

    async def send(message: Message) -> None:
        sent.append(message["body"])

    async def pages() -> AsyncIterator[bytes]:
        for n in (1, 2):
            pages_read.append(n)
            # Each page is read only once the one before it is sent.
            assert len(sent) == n
            yield b"page %d\n\n" % n

    async def scenario() -> None:
        sub = subscription()
        sub.open(send, b"opening\n\n", pages())
        sub.offer([((9, 0), b"live\n\n")], b"live\n\n")  # arrives during the replay
        assert sub.writer is not None
        await sub.writer

    asyncio.run(scenario())
    assert pages_read == [1, 2]
    assert sent == [b"opening\n\n", b"page 1\n\n", b"page 2\n\n", b"live\n\n"]


def test_a_subscription_closed_before_it_opens_sends_nothing() -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def scenario() -> None:
        sub = subscription()
        sub.close()  # overflowed, or the hub shut down, while the opening was being built
        sub.open(send, b"opening\n\n")
        assert sub.writer is None
        assert sub.ended.done()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a `send` coroutine never awaited would warn
        asyncio.run(scenario())
        gc.collect()
    assert sent == []
