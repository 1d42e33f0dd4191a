"""The hub's poller: epoll on Linux, and the `selectors` fallback other systems take."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

import winerp
import winerp.sync
from winerp.hub.poller import IN, OUT, Poller


@pytest.fixture(params=["native", "fallback"])
def kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs with the platform's poller and with the fallback forced."""
    if request.param == "fallback":
        monkeypatch.delattr(select, "epoll", raising=False)
    elif not hasattr(select, "epoll"):
        pytest.skip("no epoll here: the fallback is the poller")
    yield request.param


def test_reports_readable_and_writable_sockets_by_descriptor(kind: str) -> None:
    poller = Poller()
    a, b = socket.socketpair()
    try:
        poller.register(a)
        assert poller.poll(0) == []  # nothing to read; writes not watched
        b.send(b"x")
        assert poller.poll(1) == [(a.fileno(), IN)]
        poller.watch_writes(a, True)
        assert poller.poll(1) == [(a.fileno(), IN | OUT)]
        a.recv(1)
        assert poller.poll(1) == [(a.fileno(), OUT)]
        poller.watch_writes(a, False)
        poller.unregister(a)
        poller.unregister(a)  # a second time is ignored
        b.send(b"y")
        assert poller.poll(0) == []
    finally:
        poller.close()
        a.close()
        b.close()


def test_a_hang_up_reads_as_readable(kind: str) -> None:
    poller = Poller()
    a, b = socket.socketpair()
    try:
        poller.register(a)
        b.close()
        [(fd, events)] = poller.poll(1)
        assert fd == a.fileno() and events & ~OUT  # the hub reads, and finds the end
        assert a.recv(1) == b""
    finally:
        poller.close()
        a.close()


def test_a_hub_on_the_poller_serves_requests_big_replies_and_informs(kind: str) -> None:
    with winerp.Hub(port=0) as hub:
        responder = winerp.sync.Client("responder", port=hub.port, reconnect=False)
        caller = winerp.sync.Client("caller", port=hub.port, reconnect=False)
        got: list[object] = []

        @responder.route
        def blob(source: str, size: int) -> bytes:
            return b"z" * size

        @responder.event
        def on_winerp_information(data: object, source: str) -> None:
            got.append((data, source))

        with responder, caller:
            assert caller.request("blob", "responder", size=3) == b"zzz"
            # Larger than a socket buffer: the hub must watch for writability to finish it.
            assert caller.request("blob", "responder", size=6_000_000) == b"z" * 6_000_000
            caller.inform({"n": 1}, "responder")
            assert caller.ping("responder")
            for _ in range(200):
                if got:
                    break
                caller.ping()
            assert got == [({"n": 1}, "caller")]
