"""RFC 6455 conformance of the client core: a real `winerp.sync.Client`, wsproto as the hub.

A tiny server (a socket and wsproto's server side, `TinyHub`) answers the client's handshake
and welcomes it, then sends the case's frames, and checks with wsproto what the client does:
the frames it answers with, the close code it fails the connection with (sent before the
connection is dropped), the informs it delivers to the user, and its reconnection.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from winerp.protocol.frames import Information, Ping, Pong, Request, decode_frame, encode_frame, encode_value

try:
    from conftest import wait_for

    from conformance.wire import Peer, TinyHub, client_of, hand_frame
except ImportError:  # tests/ imported as a package
    from tests.conformance.wire import Peer, TinyHub, client_of, hand_frame
    from tests.conftest import wait_for

BINARY, TEXT, CONTINUATION, CLOSE, PING, PONG = 0x2, 0x1, 0x0, 0x8, 0x9, 0xA
_names = itertools.count(1)


@pytest.fixture
def server() -> Iterator[TinyHub]:
    tiny = TinyHub()
    yield tiny
    tiny.close()


@pytest.fixture
def connected(server: TinyHub) -> Iterator[tuple[Any, Peer, list[Any]]]:
    with client_of(server, f"conformance-{next(_names)}") as trio:
        yield trio


def inform(value: Any) -> bytes:
    return encode_frame(Information("someone", msgspec.Raw(encode_value(value))))


def sized_information(size: int) -> tuple[bytes, bytes]:
    """An `Information` frame of exactly ``size`` bytes, and the value it carries."""
    for count in range(size, -1, -1):
        value = b"v" * count
        frame = inform(value)
        if len(frame) == size:
            return frame, value
    raise AssertionError(f"no information of {size} bytes")


def assert_fails(peer: Peer, code: int, *frames: bytes) -> str:
    """Send ``frames``: the client must send a close frame with ``code``, then drop the connection."""
    peer.send(*frames)
    got, reason = peer.expect_close()
    assert got == code, (got, reason)
    return reason


def assert_alive(peer: Peer, received: list[Any]) -> None:
    """The client still reads and delivers: an inform sent now reaches the user."""
    marker = f"alive-{next(_names)}"
    peer.send(peer.binary(inform(marker)))
    wait_for(lambda: marker in received, timeout=5)


# --- framing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", [125, 126, 65535, 65536, 1 << 20], ids=["7bit-125", "16bit-126", "16bit-65535", "64bit-65536", "64bit-1MiB"]
)
def test_message_of_each_length_encoding_is_delivered(connected: tuple[Any, Peer, list[Any]], size: int) -> None:
    _client, peer, received = connected
    frame, value = sized_information(size)
    peer.send(peer.binary(frame))
    wait_for(lambda: received == [value], timeout=5)


@pytest.mark.parametrize(
    ("size", "bits"), [(5, 16), (125, 16), (5, 64), (65535, 64)], ids=["5-in-16", "125-in-16", "5-in-64", "65535-in-64"]
)
def test_non_minimal_length_is_refused(connected: tuple[Any, Peer, list[Any]], size: int, bits: int) -> None:
    _client, peer, _ = connected
    assert_fails(peer, 1002, hand_frame(BINARY, b"x" * size, masked=False, length_bits=bits)[: 2 + bits // 8])


def test_masked_hub_frame_is_refused(connected: tuple[Any, Peer, list[Any]]) -> None:
    _client, peer, _ = connected
    assert_fails(peer, 1002, hand_frame(BINARY, inform(1), masked=True)[:2])


def test_client_frames_are_masked_with_fresh_random_keys(connected: tuple[Any, Peer, list[Any]]) -> None:
    """RFC 6455 5.3: a fresh, unpredictable 32-bit key per frame (wsproto unmasks them all)."""
    _client, peer, _ = connected
    keys = []
    payloads = [b"k%02d" % number for number in range(30)]
    peer.send(*(peer.ping(payload) for payload in payloads))
    raw = b""
    while len(raw) < 30 * 9:  # 30 masked pongs of 3 bytes: 2 + 4 + 3 bytes each
        raw += peer.sock.recv(65536)
    for start in range(0, 30 * 9, 9):
        assert raw[start] == 0x8A and raw[start + 1] == 0x83
        keys.append(raw[start + 2 : start + 6])
    peer.proto.receive_bytes(raw)
    assert [peer.expect("pong") for _ in payloads] == payloads
    assert len(set(keys)) == 30
    assert sum(key[0] == key[1] == key[2] == key[3] for key in keys) < 3


# --- pings and pongs --------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"x", bytes(range(125))], ids=["0", "1", "125"])
def test_ping_is_answered_by_a_pong_with_the_same_payload(
    connected: tuple[Any, Peer, list[Any]], payload: bytes
) -> None:
    _client, peer, _ = connected
    peer.send(peer.ping(payload))
    assert peer.expect("pong") == payload


def test_ping_of_126_bytes_is_refused_from_its_header(connected: tuple[Any, Peer, list[Any]]) -> None:
    _client, peer, _ = connected
    assert_fails(peer, 1002, hand_frame(PING, b"p" * 126, masked=False)[:2])


def test_unsolicited_pong_is_ignored(connected: tuple[Any, Peer, list[Any]]) -> None:
    _client, peer, received = connected
    peer.send(peer.pong(b"nobody asked"))
    assert_alive(peer, received)


def test_ping_between_fragments_is_answered_and_the_message_kept(connected: tuple[Any, Peer, list[Any]]) -> None:
    _client, peer, received = connected
    frame = inform("in pieces")
    peer.send(peer.binary(frame[:5], fin=False), peer.ping(b"between"), peer.binary(frame[5:]))
    assert peer.expect("pong") == b"between"
    wait_for(lambda: received == ["in pieces"], timeout=5)


# --- reserved bits and opcodes ------------------------------------------------------------------


@pytest.mark.parametrize("rsv", [4, 2, 1], ids=["rsv1", "rsv2", "rsv3"])
@pytest.mark.parametrize("opcode", [BINARY, PING, CLOSE])
def test_reserved_bit_is_refused(connected: tuple[Any, Peer, list[Any]], rsv: int, opcode: int) -> None:
    _client, peer, _ = connected
    assert_fails(peer, 1002, hand_frame(opcode, b"", rsv=rsv, masked=False)[:2])


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_reserved_opcode_is_refused(connected: tuple[Any, Peer, list[Any]], opcode: int) -> None:
    _client, peer, _ = connected
    assert_fails(peer, 1002, hand_frame(opcode, b"", masked=False)[:2])


# --- fragmentation ----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 10])
def test_binary_message_in_fragments_is_reassembled(connected: tuple[Any, Peer, list[Any]], count: int) -> None:
    _client, peer, received = connected
    frame = inform(list(range(50)))
    step = -(-len(frame) // count)
    pieces = [frame[index * step : (index + 1) * step] for index in range(count)]
    peer.send(*(peer.binary(piece, fin=index == count - 1) for index, piece in enumerate(pieces)))
    wait_for(lambda: received == [list(range(50))], timeout=5)


def test_continuation_with_no_message_to_continue_is_refused(connected: tuple[Any, Peer, list[Any]]) -> None:
    _client, peer, _ = connected
    assert_fails(peer, 1002, hand_frame(CONTINUATION, b"orphan", masked=False)[:2])


def test_new_message_inside_a_fragmented_one_is_refused(connected: tuple[Any, Peer, list[Any]]) -> None:
    _client, peer, _ = connected
    assert_fails(
        peer, 1002, hand_frame(BINARY, b"half", fin=False, masked=False), hand_frame(BINARY, b"", masked=False)[:2]
    )


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_fragmented_control_frame_is_refused(connected: tuple[Any, Peer, list[Any]], opcode: int) -> None:
    _client, peer, _ = connected
    assert_fails(peer, 1002, hand_frame(opcode, b"", fin=False, masked=False)[:2])


def test_text_message_on_a_native_connection_is_refused(connected: tuple[Any, Peer, list[Any]]) -> None:
    _client, peer, _ = connected
    assert_fails(peer, 1002, peer.text("the native dialect is binary"))


def test_valid_messages_before_a_bad_frame_are_delivered(connected: tuple[Any, Peer, list[Any]]) -> None:
    """One read holds two good informs and a broken frame: both informs reach the user, then 1002."""
    _client, peer, received = connected
    assert_fails(
        peer, 1002, peer.binary(inform("first")) + peer.binary(inform("second")) + hand_frame(7, b"", masked=False)
    )
    wait_for(lambda: received == ["first", "second"], timeout=5)


def test_request_before_a_bad_frame_reaches_its_route(server: TinyHub) -> None:
    """A request in the same read as a bad frame is still handed to its route, then 1002."""
    with client_of(server, f"conformance-{next(_names)}") as (client, peer, _):
        calls: list[Any] = []
        client.route("double")(lambda source, x: calls.append((source, x)))
        request = encode_frame(Request(9, "caller", "double", msgspec.Raw(encode_value({"x": 21}))))
        assert_fails(peer, 1002, peer.binary(request) + hand_frame(PING, length=126, masked=False)[:2])
        wait_for(lambda: calls == [("caller", 21)], timeout=5)


# --- UTF-8 ------------------------------------------------------------------------------------


def test_close_reason_with_invalid_utf8_is_refused_with_1007(connected: tuple[Any, Peer, list[Any]]) -> None:
    _client, peer, _ = connected
    assert_fails(peer, 1007, hand_frame(CLOSE, (1000).to_bytes(2, "big") + b"\xc3\x28", masked=False))


# --- limits ----------------------------------------------------------------------------------


def test_absurd_length_is_refused_from_its_header(connected: tuple[Any, Peer, list[Any]]) -> None:
    """Beyond anything a hub may forward (2**62 bytes): 1009 at once, nothing buffered."""
    _client, peer, _ = connected
    assert_fails(peer, 1009, hand_frame(BINARY, length=1 << 62, length_bits=64, masked=False)[:10])


# --- closing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"), [(1000, "bye"), (1001, "going away"), (1008, ""), (3000, "app"), (4999, "é")]
)
def test_close_is_echoed_with_its_code(connected: tuple[Any, Peer, list[Any]], code: int, reason: str) -> None:
    client, peer, _ = connected
    peer.send(peer.close(code, reason))
    assert peer.expect_close()[0] == code
    wait_for(lambda: not client.is_ready, timeout=5)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
def test_close_code_that_may_not_be_sent_is_refused(connected: tuple[Any, Peer, list[Any]], code: int) -> None:
    _client, peer, _ = connected
    assert_fails(peer, 1002, hand_frame(CLOSE, code.to_bytes(2, "big"), masked=False))


def test_close_body_of_one_byte_is_refused(connected: tuple[Any, Peer, list[Any]]) -> None:
    _client, peer, _ = connected
    assert_fails(peer, 1002, hand_frame(CLOSE, b"\x03", masked=False))


def test_data_after_close_is_ignored(connected: tuple[Any, Peer, list[Any]]) -> None:
    client, peer, received = connected
    peer.send(peer.binary(inform("before")) + peer.close(1000, "done") + peer.binary(inform("after")))
    assert peer.expect_close()[0] == 1000
    wait_for(lambda: received == ["before"], timeout=5)
    client.close()  # every inform already read has been delivered once close() returns
    assert received == ["before"]


def test_close_handshake_started_by_the_client_completes(server: TinyHub) -> None:
    with client_of(server, f"conformance-{next(_names)}") as (client, peer, _):
        client.close()
        assert peer.expect_close() == (1000, "client closing")


def test_client_reconnects_after_failing_a_connection(server: TinyHub) -> None:
    """A framing error ends one connection (with 1002), not the client: it comes back."""
    with client_of(server, f"conformance-{next(_names)}", reconnect=True) as (client, peer, _):
        assert_fails(peer, 1002, hand_frame(BINARY, b"", rsv=4, masked=False))
        again = server.accept(timeout=10)
        try:
            server.welcome(again)
            wait_for(lambda: client.is_ready, timeout=5)
            again.send(again.binary(encode_frame(Ping(77, "someone"))))
            while True:
                frame = decode_frame(again.expect("binary"))
                if isinstance(frame, Pong):
                    assert frame.id == 77
                    break
        finally:
            client.close()
            again.shut()
