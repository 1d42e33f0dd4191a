"""The independent peer of the conformance suite: wsproto on one end, winerp on the other.

wsproto performs the opening handshakes, builds the frames a case sends where it can, and
parses every frame winerp sends back with its own checks (masking, lengths, reserved bits,
opcodes, close codes, UTF-8): a malformed frame from the hub or the client raises
``ParseFailed`` and fails the test. Frames that wsproto refuses to build (broken on purpose)
come from `hand_frame`, byte by byte.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request
from wsproto.frame_protocol import FrameProtocol, Opcode

from winerp.protocol.frames import SUBPROTOCOL, Hello, Welcome, decode_frame, encode_frame
from winerp.sync import Client

_KEY = b"\x37\xfa\x21\x3d"
TIMEOUT = 5.0


def hand_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
    length_bits: int | None = None,
) -> bytes:
    """One frame built byte by byte, for the frames wsproto refuses to build (bad on purpose).

    ``rsv`` is the three reserved bits (4 = RSV1, 2 = RSV2, 1 = RSV3); ``length`` announces a
    length other than the payload's; ``length_bits`` (7, 16 or 64) forces a length encoding.
    """
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    size = len(payload) if length is None else length
    bits = length_bits or (7 if size < 126 else 16 if size < 65536 else 64)
    mask_bit = 0x80 if masked else 0
    if bits == 7:
        head = bytes((first, mask_bit | size))
    elif bits == 16:
        head = bytes((first, mask_bit | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + size.to_bytes(8, "big")
    if not masked:
        return head + payload
    return head + _KEY + bytes(byte ^ _KEY[index % 4] for index, byte in enumerate(payload))


class Peer:
    """One websocket end spoken by wsproto over a real socket, after the handshake.

    ``client=True`` is a client talking to the hub (its frames masked); ``client=False`` a
    server talking to a winerp client.
    """

    def __init__(self, sock: socket.socket, *, client: bool, leftover: bytes = b"") -> None:
        self.sock = sock
        self.proto = FrameProtocol(client=client, extensions=[])
        self._parts: list[Any] = []
        if leftover:
            self.proto.receive_bytes(leftover)

    # building (wsproto) and sending

    def send(self, *frames: bytes | bytearray) -> None:
        self.sock.sendall(b"".join(bytes(frame) for frame in frames))

    def binary(self, payload: bytes, fin: bool = True) -> bytes:
        return bytes(self.proto.send_data(payload, fin))

    def text(self, payload: str, fin: bool = True) -> bytes:
        return bytes(self.proto.send_data(payload, fin))

    def ping(self, payload: bytes = b"") -> bytes:
        return bytes(self.proto.ping(payload))

    def pong(self, payload: bytes = b"") -> bytes:
        return bytes(self.proto.pong(payload))

    def close(self, code: int | None = None, reason: str | None = None) -> bytes:
        return bytes(self.proto.close(code, reason))

    # receiving, every frame checked by wsproto

    def next(self, timeout: float = TIMEOUT) -> tuple[str, Any]:
        """The next whole thing the other end sent.

        ``("binary", bytes)``, ``("text", str)``, ``("ping", bytes)``, ``("pong", bytes)``,
        ``("close", (code, reason))`` or ``("eof", None)`` once the connection ended.
        """
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.proto.received_frames():
                found = self._take(frame)
                if found is not None:
                    return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"nothing came within {timeout} s")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(262144)
            except socket.timeout:
                raise AssertionError(f"nothing came within {timeout} s") from None
            except ConnectionError:
                return "eof", None
            if not data:
                return "eof", None
            self.proto.receive_bytes(data)

    def _take(self, frame: Any) -> tuple[str, Any] | None:
        opcode = frame.opcode
        if opcode is Opcode.CLOSE:
            return "close", (int(frame.payload[0]), frame.payload[1])
        if opcode in (Opcode.PING, Opcode.PONG):
            return opcode.name.lower(), bytes(frame.payload)
        self._parts.append(frame.payload)
        if not frame.message_finished:
            return None
        parts, self._parts = self._parts, []
        if isinstance(parts[0], str):
            return "text", "".join(parts)
        return "binary", b"".join(bytes(part) for part in parts)

    def expect(self, kind: str, timeout: float = TIMEOUT) -> Any:
        """The next thing sent, which must be of ``kind``; return its value."""
        found, value = self.next(timeout)
        assert found == kind, f"expected {kind}, got {found} {value!r:.200}"
        return value

    def expect_close(self, timeout: float = TIMEOUT) -> tuple[int, str]:
        """Read until the other end's close frame, then until it ends the connection.

        Whatever came before the close frame is skipped; nothing may come after it.
        """
        deadline = time.monotonic() + timeout
        while True:
            kind, value = self.next(max(0.01, deadline - time.monotonic()))
            assert kind != "eof", "the connection ended without a close frame"
            if kind == "close":
                break
        after = self.rest(deadline - time.monotonic())
        assert after == b"", f"bytes sent after a close frame: {after!r}"
        return value  # type: ignore[no-any-return]

    def rest(self, timeout: float = TIMEOUT) -> bytes:
        """Everything read until the other end ends the connection (EOF or reset)."""
        received = b""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the connection stayed open for {timeout} s")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise AssertionError(f"the connection stayed open for {timeout} s") from None
            except ConnectionError:
                return received
            if not data:
                return received
            received += data

    def shut(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "the connection ended during the handshake"
        head += chunk
    end = head.index(b"\r\n\r\n") + 4
    return head[:end], head[end:]


def open_hub(port: int, *, native: bool = True) -> Peer:
    """A raw websocket to the hub, opened by wsproto's client handshake."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    handshake = WSConnection(ConnectionType.CLIENT)
    subprotocols = [SUBPROTOCOL] if native else []
    sock.sendall(handshake.send(Request(host=f"127.0.0.1:{port}", target="/", subprotocols=subprotocols)))
    head, leftover = _read_head(sock)
    handshake.receive_data(head)
    events = list(handshake.events())
    assert events and isinstance(events[0], AcceptConnection), events
    return Peer(sock, client=True, leftover=leftover)


def registered(port: int, name: str, routes: tuple[str, ...] = ()) -> Peer:
    """A native raw connection to the hub, registered as ``name``."""
    peer = open_hub(port)
    peer.send(peer.binary(encode_frame(Hello(name, list(routes)))))
    welcome = decode_frame(peer.expect("binary"))
    assert isinstance(welcome, Welcome) and not welcome.on_hold, welcome
    return peer


class TinyHub:
    """A websocket server for one winerp client at a time: wsproto answers the handshake, then
    a case sends its frames and reads what the client does."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])

    def accept(self, timeout: float = TIMEOUT) -> Peer:
        self.listener.settimeout(timeout)
        sock, _ = self.listener.accept()
        sock.settimeout(TIMEOUT)
        head, leftover = _read_head(sock)
        handshake = WSConnection(ConnectionType.SERVER)
        handshake.receive_data(head)
        events = list(handshake.events())
        assert events and isinstance(events[0], Request), events
        assert SUBPROTOCOL in events[0].subprotocols
        sock.sendall(handshake.send(AcceptConnection(subprotocol=SUBPROTOCOL)))
        return Peer(sock, client=False, leftover=leftover)

    def welcome(self, peer: Peer) -> str:
        """Read the client's Hello and welcome it (a long heartbeat: no ping during a case)."""
        hello = decode_frame(peer.expect("binary"))
        assert isinstance(hello, Hello), hello
        peer.send(peer.binary(encode_frame(Welcome(hello.name, False, 30.0, 1 << 20, []))))
        return hello.name

    def close(self) -> None:
        self.listener.close()


@contextlib.contextmanager
def client_of(server: TinyHub, name: str, **options: Any) -> Iterator[tuple[Client, Peer, list[Any]]]:
    """A real `winerp.sync.Client` connected to ``server`` and welcomed.

    Yields the client, the server's end of its connection, and the list that collects the
    values of the informs it receives.
    """
    options.setdefault("reconnect", False)
    client = Client(name, port=server.port, **options)
    received: list[Any] = []

    def on_winerp_information(data: Any, source: str) -> None:
        received.append(data)

    client.event(on_winerp_information)
    failure: list[BaseException] = []

    def start() -> None:
        try:
            client.start(timeout=TIMEOUT)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failure.append(exc)

    starter = threading.Thread(target=start)
    starter.start()
    peer = server.accept()
    try:
        server.welcome(peer)
        starter.join(TIMEOUT + 1)
        assert not failure, failure
        assert client.is_ready
        yield client, peer, received
    finally:
        client.close()
        peer.shut()
