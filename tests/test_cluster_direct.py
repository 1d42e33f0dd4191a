"""The hub loop's direct NATS connection for hub-to-hub messages (winerp/cluster/direct.py).

Its protocol handling over real sockets, and hubs (in this process) against a real
``nats-server -js``: calls cross on it, a hub opens another when it drops, and a hub without
one (the nats-py path) still talks to one with one.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest

pytest.importorskip("nats")

import winerp
from winerp.cluster.direct import ConnectionLost, Direct, Unsupported, open_direct
from winerp.sync import Client

try:
    from cluster_tools import NatsServer, running_nats
    from conftest import wait_for
except ImportError:  # tests/ is a package
    from tests.cluster_tools import NatsServer, running_nats
    from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(60)


class Pair:
    """A `Direct` over one end of a real socket pair; the test plays NATS on the other end."""

    def __init__(self) -> None:
        self.ours, self.server = socket.socketpair()
        self.ours.setblocking(False)
        self.server.settimeout(5)
        self.received: list[bytes] = []
        self.writable: list[bool] = []
        self.direct = Direct(self.ours, b"", 1_048_576, self.received.append, self.writable.append)

    def feed(self, data: bytes) -> None:
        """Send ``data`` as the server and let the direct connection read it."""
        self.server.sendall(data)
        self.direct.service()

    def close(self) -> None:
        self.direct.close()
        self.server.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    p = Pair()
    yield p
    p.close()


def _msg(payload: bytes, subject: bytes = b"winerp.c.hub.x", reply: bytes = b"") -> bytes:
    reply_part = b" " + reply if reply else b""
    return b"MSG %s 1%s %d\r\n%s\r\n" % (subject, reply_part, len(payload), payload)


def test_messages_arrive_whole_and_untouched_however_the_bytes_are_cut(pair: Pair) -> None:
    # Payloads that hold the protocol's own separators and words: only the size delimits them.
    payloads = [b"", b"\r\n", b"MSG x 1 3\r\nabc\r\n", bytes(range(256)), b"PING\r\n" * 3]
    stream = b"".join(_msg(p) for p in payloads[:3]) + _msg(payloads[3], reply=b"_INBOX.r") + _msg(payloads[4])
    for cut in range(1, len(stream), 7):
        pair.received.clear()
        pair.feed(stream[:cut])
        pair.feed(stream[cut:])
        assert pair.received == payloads


def test_pings_are_answered_and_other_lines_ignored(pair: Pair) -> None:
    pair.feed(b'INFO {"server_id":"x"}\r\n+OK\r\nPONG\r\nPING\r\n' + _msg(b"after"))
    assert pair.server.recv(100) == b"PONG\r\n"
    assert pair.received == [b"after"]


def test_publishes_leave_together_at_flush_as_pub_commands(pair: Pair) -> None:
    pair.direct.publish("a.b", b"one")
    pair.direct.publish("c", b"\r\ntwo")
    assert pair.direct.pending
    pair.direct.flush()
    assert not pair.direct.pending
    expected = b"PUB a.b 3\r\none\r\nPUB c 5\r\n\r\ntwo\r\n"
    got = b""
    while len(got) < len(expected):
        got += pair.server.recv(100)
    assert got == expected


def test_a_message_over_the_servers_limit_is_dropped_not_sent(pair: Pair, caplog: pytest.LogCaptureFixture) -> None:
    pair.direct.max_payload = 10
    pair.direct.publish("a", b"x" * 11)
    assert not pair.direct.pending
    assert "dropped a 11-byte message" in caplog.text


def test_a_write_the_socket_cannot_take_waits_for_it_to_be_writable(pair: Pair) -> None:
    big = b"y" * 1_000_000
    for _ in range(8):
        pair.direct.publish("s", big)
    pair.direct.flush()  # never blocks: what the socket did not take waits
    assert pair.writable == [True]
    got = 0
    expected = 8 * len(b"PUB s 1000000\r\n" + big + b"\r\n")
    while got < expected:
        got += len(pair.server.recv(1_000_000))
        pair.direct.service()
    assert pair.writable == [True, False]


@pytest.mark.parametrize(
    ("data", "why"),
    [(b"-ERR 'Slow Consumer'\r\n", "Slow Consumer"), (b"MSG a 1 x\r\n", "malformed")],
)
def test_errors_from_nats_end_the_connection(pair: Pair, data: bytes, why: str) -> None:
    with pytest.raises(ConnectionLost, match=why):
        pair.feed(data)


def test_the_server_closing_ends_the_connection(pair: Pair) -> None:
    pair.server.close()
    with pytest.raises(ConnectionLost, match="closed"):
        pair.direct.service()


def test_urls_it_cannot_serve_leave_the_hub_on_nats_py() -> None:
    with pytest.raises(Unsupported):
        open_direct(urlparse("tls://127.0.0.1:4222"), ["s"], "test", 1.0)


# against a real NATS server


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    yield from running_nats(tmp_path)


def test_a_direct_connection_subscribes_and_carries_payloads(nats: NatsServer) -> None:
    url = urlparse(nats.url)
    a, rest_a, limit = open_direct(url, ["t.a"], "a", 5.0)
    b, rest_b, _ = open_direct(url, ["t.b"], "b", 5.0)
    got: list[bytes] = []
    direct_a = Direct(a, rest_a, limit, got.append, lambda on: None)
    direct_b = Direct(b, rest_b, limit, got.append, lambda on: None)
    try:
        payload = bytes(range(256)) * 4
        direct_b.publish("t.a", payload)
        direct_b.flush()
        a.setblocking(True)
        a.settimeout(5)
        while not got:
            direct_a.service()
        assert got == [payload]
    finally:
        direct_a.close()
        direct_b.close()


def _hub(nats: NatsServer) -> winerp.Hub:
    hub = winerp.Hub(port=0, cluster=nats.url, cluster_name="direct")
    hub.start()
    return hub


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def _pair_of_clients(clients: list[Client], near: winerp.Hub, far: winerp.Hub) -> tuple[Client, Client]:
    """``caller`` on ``near`` and ``server`` on ``far``, each with an ``echo`` route; ``server``
    also has ``ask``, which calls ``echo`` back on its caller."""
    server = Client("server", port=far.port)
    caller = Client("caller", port=near.port)
    for client in (server, caller):
        client.route("echo")(lambda source, value=None: value)
    server.route("ask")(lambda source: server.request("echo", source, value="back", timeout=5))
    clients += [server, caller]
    server.start(timeout=10)
    caller.start(timeout=10)
    wait_for(lambda: "server" in caller.peers())
    return caller, server


def test_a_hub_whose_direct_connection_drops_opens_another(nats: NatsServer, clients: list[Client]) -> None:
    near, far = _hub(nats), _hub(nats)
    try:
        assert near._cluster is not None and far._cluster is not None
        first = far._cluster.direct
        assert first is not None and near._cluster.direct is not None  # both hubs took it
        caller, _ = _pair_of_clients(clients, near, far)
        assert caller.request("echo", "server", value=b"\x00\r\n", timeout=5) == b"\x00\r\n"
        first.sock.shutdown(socket.SHUT_RDWR)  # as when NATS drops that connection alone
        wait_for(lambda: far._cluster is not None and far._cluster.direct not in (None, first))
        assert caller.request("echo", "server", value=[1, 2], timeout=5) == [1, 2]
    finally:
        near.stop()
        far.stop()


def test_hubs_with_and_without_a_direct_connection_talk(
    nats: NatsServer, clients: list[Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    near = _hub(nats)
    monkeypatch.setenv("WINERP_CLUSTER_NO_DIRECT", "1")
    far = _hub(nats)
    monkeypatch.delenv("WINERP_CLUSTER_NO_DIRECT")
    try:
        assert near._cluster is not None and near._cluster.direct is not None
        assert far._cluster is not None and far._cluster.direct is None
        caller, _ = _pair_of_clients(clients, near, far)
        assert caller.request("echo", "server", value={"k": 1}, timeout=5) == {"k": 1}
        assert caller.request("ask", "server", timeout=10) == "back"  # far to near, inside a call
    finally:
        near.stop()
        far.stop()
        assert os.environ.get("WINERP_CLUSTER_NO_DIRECT") is None


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "nats-py thread"])
def test_a_message_too_large_for_nats_fails_with_payload_too_large_and_the_hubs_go_on(
    nats: NatsServer, clients: list[Client], monkeypatch: pytest.MonkeyPatch, direct: bool
) -> None:
    if not direct:
        monkeypatch.setenv("WINERP_CLUSTER_NO_DIRECT", "1")
    near, far = _hub(nats), _hub(nats)
    try:
        caller, server = _pair_of_clients(clients, near, far)
        big = b"x" * (2 * 1024 * 1024)  # within the hubs' limit (8 MiB), over NATS's (1 MiB)
        server.route("big")(lambda source: big)
        with pytest.raises(winerp.PayloadTooLarge, match="cannot cross to another hub"):
            caller.request("echo", "server", value=big, timeout=30)  # at once, not at the timeout
        with pytest.raises(winerp.PayloadTooLarge, match="cannot cross to another hub"):
            caller.request("big", "server", timeout=30)
        assert caller.request("echo", "server", value=b"small", timeout=5) == b"small"
        assert "server" in caller.peers()  # nothing dropped the hubs' NATS connections
    finally:
        near.stop()
        far.stop()
