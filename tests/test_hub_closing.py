"""How the hub ends a connection, seen from a raw socket: `HubConnection.close` and `abort`.

Graceful (`close`): the close frame leaves after what was already queued, then the hub shuts
its side only (the peer reads EOF) and goes on reading until the peer closes too, or until
the grace period ends. At once (`abort`): the close frame, then the socket is closed, with no
wait for the peer.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest

import winerp
from winerp.hub.connection import CLOSING_GRACE, HubConnection, Stage
from winerp.protocol.frames import HUB, Hello, Ping, Pong, Welcome, decode_frame, encode_frame

try:
    from conftest import wait_for
    from security_tools import masked_frame, upgrade_request
except ImportError:  # tests/ is a package
    from tests.conftest import wait_for
    from tests.security_tools import masked_frame, upgrade_request

pytestmark = pytest.mark.timeout(60)

OP_BINARY, OP_CLOSE = 0x2, 0x8


@pytest.fixture
def quick_hub() -> Iterator[winerp.Hub]:
    """A hub whose heartbeat sweep runs often, so drops and grace periods are seen quickly."""
    with winerp.Hub(port=0, heartbeat=0.2) as running:
        yield running


def _connect(port: int) -> socket.socket:
    """A TCP connection through the websocket upgrade, answered 101."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(upgrade_request(port))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "the hub closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert head.endswith(b"\r\n\r\n"), "the hub sent a frame before it was asked anything"
    return sock


def _read_to_eof(sock: socket.socket, timeout: float = 5.0) -> list[tuple[int, bytes]]:
    """Every frame the hub sends until it shuts its side (EOF); fails if that takes over ``timeout``."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"no EOF from the hub within {timeout} s") from None
        if not chunk:
            break
        data += chunk
    frames = []
    while data:
        opcode, size = data[0] & 0x0F, data[1] & 0x7F
        offset = 2
        if size == 126:
            size, offset = struct.unpack("!H", data[2:4])[0], 4
        frames.append((opcode, data[offset : offset + size]))
        data = data[offset + size :]
    return frames


def _connection(hub: winerp.Hub, name: str) -> HubConnection:
    found = [c for c in hub._connections.all if c.name == name]
    assert len(found) == 1, found
    return found[0]


def _close_code(payload: bytes) -> tuple[int, str]:
    return int.from_bytes(payload[:2], "big"), payload[2:].decode()


def test_close_follows_what_was_queued_then_the_hub_shuts_its_side_and_waits(quick_hub: winerp.Hub) -> None:
    sock = _connect(quick_hub.port)
    # One write: a Hello and a ping (answered), then a frame with reserved bits (a protocol error).
    hello = masked_frame(OP_BINARY, encode_frame(Hello("closing-graceful", [])))
    ping = masked_frame(OP_BINARY, encode_frame(Ping(7, HUB)))
    sock.sendall(hello + ping + masked_frame(OP_BINARY, b"x", rsv=4))
    frames = _read_to_eof(sock)
    assert [opcode for opcode, _ in frames] == [OP_BINARY, OP_BINARY, OP_CLOSE]
    assert isinstance(decode_frame(frames[0][1]), Welcome)
    assert decode_frame(frames[1][1]) == Pong(7, HUB)
    assert _close_code(frames[2][1])[0] == 1002
    # EOF, but our side is still open: the hub half-closed, and reads on until we close.
    connection = _connection(quick_hub, "closing-graceful")
    assert connection.stage is Stage.HALF_CLOSED
    sock.sendall(b"late bytes, read and dropped")
    sock.close()
    wait_for(lambda: connection.stage is Stage.CLOSED, timeout=5)
    assert len(quick_hub._connections) == 0


def test_a_peer_that_never_closes_its_side_is_cut_after_the_grace_period(quick_hub: winerp.Hub) -> None:
    sock = _connect(quick_hub.port)
    try:
        sock.sendall(masked_frame(OP_BINARY, encode_frame(Hello("closing-stubborn", []))))
        sock.sendall(masked_frame(OP_BINARY, b"x", rsv=4))  # reserved bits: closed with 1002
        frames = _read_to_eof(sock)
        assert frames[-1][0] == OP_CLOSE
        connection = _connection(quick_hub, "closing-stubborn")
        started = time.monotonic()
        wait_for(lambda: connection.stage is Stage.CLOSED, timeout=CLOSING_GRACE + 5)
        assert time.monotonic() - started > CLOSING_GRACE / 2, "cut before its grace period"
        assert len(quick_hub._connections) == 0
    finally:
        sock.close()


def test_the_peer_closing_first_gets_its_code_back_then_eof(quick_hub: winerp.Hub) -> None:
    sock = _connect(quick_hub.port)
    sock.sendall(masked_frame(OP_BINARY, encode_frame(Hello("closing-polite", []))))
    sock.sendall(masked_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"bye"))
    frames = _read_to_eof(sock)
    assert frames[-1] == (OP_CLOSE, (1000).to_bytes(2, "big"))
    assert "closing-polite" not in quick_hub.clients
    sock.close()
    wait_for(lambda: len(quick_hub._connections) == 0, timeout=5)


def test_abort_sends_its_close_frame_and_closes_without_waiting(quick_hub: winerp.Hub) -> None:
    """A silent client is dropped at once: no grace period, even though it never closes its side."""
    sock = _connect(quick_hub.port)
    try:
        sock.sendall(masked_frame(OP_BINARY, encode_frame(Hello("closing-silent", []))))
        frames = _read_to_eof(sock, timeout=10)  # five heartbeats of 0.2 s, then the next sweep
        code, reason = _close_code(frames[-1][1])
        assert (frames[-1][0], code) == (OP_CLOSE, 1008) and reason.startswith("heartbeat timeout")
        # Gone from the hub already: the socket was closed, not half-closed.
        assert len(quick_hub._connections) == 0
    finally:
        sock.close()
