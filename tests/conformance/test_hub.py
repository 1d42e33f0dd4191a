"""RFC 6455 conformance of the hub: a real `winerp.Hub`, raw sockets, wsproto as the client.

Each case opens a websocket with wsproto's client handshake, sends the case's frames (built
by wsproto, or by `hand_frame` when they are broken on purpose) and checks, with wsproto
parsing every frame the hub sends back, what the hub answers. Bad frames are sent header
first and alone where the rule depends on the header only: the hub must fail the connection
before any payload arrives.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import msgspec
import pytest

import winerp
from winerp.protocol.frames import (
    HUB,
    Hello,
    Inform,
    Information,
    Ping,
    Pong,
    Welcome,
    decode_frame,
    encode_frame,
    encode_value,
)

try:
    from conformance.wire import Peer, hand_frame, open_hub, registered
except ImportError:  # tests/ imported as a package
    from tests.conformance.wire import Peer, hand_frame, open_hub, registered

BINARY, TEXT, CONTINUATION, CLOSE, PING, PONG = 0x2, 0x1, 0x0, 0x8, 0x9, 0xA
SMALL_LIMIT = 64 * 1024
_names = itertools.count(1)


@pytest.fixture(scope="module")
def hub() -> Iterator[winerp.Hub]:
    with winerp.Hub(port=0, heartbeat=5.0) as running:
        yield running


@pytest.fixture(scope="module")
def small_hub() -> Iterator[winerp.Hub]:
    """A hub with a 64 KiB message limit: a fragmented message may have 1024 fragments."""
    with winerp.Hub(port=0, heartbeat=5.0, max_message_size=SMALL_LIMIT) as running:
        yield running


def _name(prefix: str = "c") -> str:
    return f"{prefix}-{next(_names)}"


def sized_inform(target: str, size: int) -> bytes:
    """An `Inform` to ``target`` whose encoded frame is exactly ``size`` bytes."""
    for count in range(size, -1, -1):
        frame = encode_frame(Inform([target], msgspec.Raw(encode_value(b"x" * count))))
        if len(frame) == size:
            return frame
    raise AssertionError(f"no inform of {size} bytes")


def information_of(peer: Peer) -> Information:
    """The next inform delivered to ``peer`` (presence notices skipped)."""
    while True:
        frame = decode_frame(peer.expect("binary"))
        if isinstance(frame, Information):
            return frame


def assert_alive(peer: Peer) -> None:
    """The hub still serves this connection: a protocol ping to the hub is answered."""
    peer.send(peer.binary(encode_frame(Ping(4242, HUB))))
    while True:
        kind, value = peer.next()
        assert kind in ("binary", "pong"), (kind, value)
        if kind == "binary" and isinstance(decode_frame(value), Pong):
            return


def assert_fails(peer: Peer, code: int, *frames: bytes) -> str:
    """Send ``frames``; the hub must close with ``code``, then end the connection."""
    try:
        peer.send(*frames)
    except OSError:
        pass  # the hub may have closed before reading everything
    got, reason = peer.expect_close()
    assert got == code, (got, reason)
    peer.shut()
    return reason


def header_of(frame: bytes) -> bytes:
    """The first two bytes of a frame: all that the hub needs to refuse a bad header."""
    return frame[:2]


# --- framing: sizes and length encodings ------------------------------------------------------


@pytest.mark.parametrize(
    "size", [125, 126, 65535, 65536, 1 << 20], ids=["7bit-125", "16bit-126", "16bit-65535", "64bit-65536", "64bit-1MiB"]
)
def test_message_of_each_length_encoding_is_delivered(hub: winerp.Hub, size: int) -> None:
    target_name = _name("target")
    target = registered(hub.port, target_name)
    sender = registered(hub.port, _name())
    message = sized_inform(target_name, size)
    sender.send(sender.binary(message))
    sent = decode_frame(message)
    assert isinstance(sent, Inform)
    assert bytes(information_of(target).data) == bytes(sent.data)
    assert_alive(sender)
    sender.shut()
    target.shut()


def test_empty_frames_are_frames(hub: winerp.Hub) -> None:
    """Zero-length frames: an empty ping gets an empty pong; empty fragments add nothing."""
    target_name = _name("target")
    target = registered(hub.port, target_name)
    sender = registered(hub.port, _name())
    sender.send(sender.ping(b""))
    assert sender.expect("pong") == b""
    message = sized_inform(target_name, 200)
    sender.send(sender.binary(b"", fin=False), sender.binary(message, fin=False), sender.binary(b"", fin=True))
    information_of(target)
    sender.shut()
    target.shut()


@pytest.mark.parametrize(
    ("size", "bits"), [(5, 16), (125, 16), (5, 64), (65535, 64)], ids=["5-in-16", "125-in-16", "5-in-64", "65535-in-64"]
)
def test_non_minimal_length_is_refused(hub: winerp.Hub, size: int, bits: int) -> None:
    """RFC 6455 5.2: "the minimal number of bytes MUST be used to encode the length"."""
    peer = open_hub(hub.port)
    frame = hand_frame(BINARY, b"x" * size, length_bits=bits)
    assert_fails(peer, 1002, frame[: 2 + bits // 8])


def test_64_bit_length_with_its_top_bit_set_is_refused(hub: winerp.Hub) -> None:
    peer = open_hub(hub.port)
    assert_fails(peer, 1002, hand_frame(BINARY, length=1 << 63, length_bits=64)[:10])


def test_unmasked_client_frame_is_refused_from_its_header(hub: winerp.Hub) -> None:
    peer = open_hub(hub.port)
    assert_fails(peer, 1002, header_of(hand_frame(BINARY, b"hello", masked=False)))


# --- pings and pongs --------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"x", b"\x00\xff" * 10, bytes(range(125))], ids=["0", "1", "20", "125"])
def test_ping_is_answered_by_a_pong_with_the_same_payload(hub: winerp.Hub, payload: bytes) -> None:
    peer = open_hub(hub.port)
    peer.send(peer.ping(payload))
    assert peer.expect("pong") == payload
    peer.shut()


def test_ping_of_126_bytes_is_refused_from_its_header(hub: winerp.Hub) -> None:
    peer = open_hub(hub.port)
    assert_fails(peer, 1002, header_of(hand_frame(PING, b"p" * 126)))


def test_unsolicited_pong_is_ignored(hub: winerp.Hub) -> None:
    peer = registered(hub.port, _name())
    peer.send(peer.pong(b"nobody asked"), peer.pong(b""))
    assert_alive(peer)
    peer.shut()


def test_ping_between_fragments_is_answered_and_the_message_kept(hub: winerp.Hub) -> None:
    target_name = _name("target")
    target = registered(hub.port, target_name)
    sender = registered(hub.port, _name())
    message = sized_inform(target_name, 300)
    sender.send(sender.binary(message[:100], fin=False), sender.ping(b"between"), sender.binary(message[100:]))
    assert sender.expect("pong") == b"between"
    information_of(target)
    sender.shut()
    target.shut()


# --- reserved bits and opcodes ------------------------------------------------------------------


@pytest.mark.parametrize("rsv", [4, 2, 1], ids=["rsv1", "rsv2", "rsv3"])
@pytest.mark.parametrize("opcode", [BINARY, TEXT, CONTINUATION, PING, PONG, CLOSE])
def test_reserved_bit_is_refused_from_the_header(hub: winerp.Hub, rsv: int, opcode: int) -> None:
    peer = open_hub(hub.port)
    assert_fails(peer, 1002, header_of(hand_frame(opcode, b"abc", rsv=rsv)))


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
def test_reserved_opcode_is_refused_from_the_header(hub: winerp.Hub, opcode: int) -> None:
    peer = open_hub(hub.port)
    assert_fails(peer, 1002, header_of(hand_frame(opcode, b"abc")))


# --- fragmentation ----------------------------------------------------------------------------


def _pieces(data: bytes, count: int) -> list[bytes]:
    step = -(-len(data) // count)
    return [data[index * step : (index + 1) * step] for index in range(count)]


@pytest.mark.parametrize("count", [1, 2, 3, 7, 50])
def test_binary_message_in_fragments_is_reassembled(hub: winerp.Hub, count: int) -> None:
    target_name = _name("target")
    target = registered(hub.port, target_name)
    sender = registered(hub.port, _name())
    message = sized_inform(target_name, 1000)
    pieces = _pieces(message, count)
    sender.send(*(sender.binary(piece, fin=index == count - 1) for index, piece in enumerate(pieces)))
    information = information_of(target)
    assert msgspec.msgpack.decode(information.data) == b"x" * len(msgspec.msgpack.decode(information.data))
    sender.shut()
    target.shut()


@pytest.mark.parametrize("count", [1, 2, 5])
def test_text_message_in_fragments_is_reassembled(hub: winerp.Hub, count: int) -> None:
    """The winerp 1.x dialect speaks JSON text: its registration, in fragments, gets through."""
    name = _name("legacy")
    peer = open_hub(hub.port, native=False)
    message = msgspec.json.encode({"type": 1, "id": name, "uuid": "u1"}).decode()
    step = -(-len(message) // count)
    pieces = [message[index * step : (index + 1) * step] for index in range(count)]
    peer.send(*(peer.text(piece, fin=index == count - 1) for index, piece in enumerate(pieces)))
    answer = msgspec.json.decode(peer.expect("text"))
    assert answer["type"] == 0, answer
    assert name in hub.clients
    peer.shut()


def test_control_frames_between_fragments(hub: winerp.Hub) -> None:
    target_name = _name("target")
    target = registered(hub.port, target_name)
    sender = registered(hub.port, _name())
    message = sized_inform(target_name, 400)
    sender.send(
        sender.binary(message[:10], fin=False),
        sender.pong(b"unsolicited"),
        sender.binary(message[10:200], fin=False),
        sender.ping(b"1"),
        sender.ping(b"2"),
        sender.binary(message[200:], fin=True),
    )
    assert sender.expect("pong") == b"1"
    assert sender.expect("pong") == b"2"
    information_of(target)
    sender.shut()
    target.shut()


def test_continuation_with_no_message_to_continue_is_refused(hub: winerp.Hub) -> None:
    peer = open_hub(hub.port)
    assert_fails(peer, 1002, header_of(hand_frame(CONTINUATION, b"orphan")))


@pytest.mark.parametrize("second", [BINARY, TEXT])
def test_new_message_inside_a_fragmented_one_is_refused(hub: winerp.Hub, second: int) -> None:
    peer = open_hub(hub.port)
    assert_fails(peer, 1002, hand_frame(BINARY, b"first half", fin=False), header_of(hand_frame(second, b"x")))


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_fragmented_control_frame_is_refused(hub: winerp.Hub, opcode: int) -> None:
    peer = open_hub(hub.port)
    assert_fails(peer, 1002, header_of(hand_frame(opcode, b"part", fin=False)))


def test_valid_message_before_a_bad_frame_is_delivered(hub: winerp.Hub) -> None:
    """One write holds a good inform, then a broken frame: the inform goes through, then 1002."""
    target_name = _name("target")
    target = registered(hub.port, target_name)
    sender = registered(hub.port, _name())
    assert_fails(sender, 1002, sender.binary(sized_inform(target_name, 100)) + hand_frame(BINARY, b"x", rsv=4))
    information_of(target)
    target.shut()


# --- UTF-8 (text frames: the winerp 1.x JSON dialect) ------------------------------------------


INVALID_UTF8 = {
    "lone continuation byte": b'"\x80"',
    "0xff": b'"\xff"',
    "overlong slash": b'"\xc0\xaf"',
    "surrogate half": b'"\xed\xa0\x80"',
    "beyond U+10FFFF": b'"\xf4\x90\x80\x80"',
    "cut sequence at the end": b'"\xe2\x82',
}


@pytest.mark.parametrize("what", list(INVALID_UTF8))
def test_text_message_with_invalid_utf8_is_refused_with_1007(hub: winerp.Hub, what: str) -> None:
    peer = open_hub(hub.port, native=False)
    assert_fails(peer, 1007, hand_frame(TEXT, INVALID_UTF8[what]))


@pytest.mark.parametrize("split", range(1, 4))
def test_multibyte_character_split_across_fragments_is_accepted(hub: winerp.Hub, split: int) -> None:
    """Fragments may cut a character anywhere: only the whole message must be valid UTF-8."""
    name = _name("lëgacy-€-𝄞")
    peer = open_hub(hub.port, native=False)
    message = msgspec.json.encode({"type": 1, "id": name, "uuid": "u1"})
    start = message.index("𝄞".encode())  # a 4-byte character, cut after `split` bytes
    peer.send(
        hand_frame(TEXT, message[: start + split], fin=False),
        hand_frame(CONTINUATION, message[start + split :]),
    )
    assert msgspec.json.decode(peer.expect("text"))["type"] == 0
    assert name in hub.clients
    peer.shut()


def test_close_reason_with_invalid_utf8_is_refused_with_1007(hub: winerp.Hub) -> None:
    peer = open_hub(hub.port)
    assert_fails(peer, 1007, hand_frame(CLOSE, (1000).to_bytes(2, "big") + b"bad \xff reason"))


# --- limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [16, 64])
def test_message_over_the_limit_is_refused_from_its_header(bits: int) -> None:
    size = SMALL_LIMIT + 1 if bits == 64 else 65535
    limit = SMALL_LIMIT if bits == 64 else 65534
    with winerp.Hub(port=0, max_message_size=limit) as strict:
        peer = open_hub(strict.port)
        assert_fails(peer, 1009, hand_frame(BINARY, length=size, length_bits=bits)[: 2 + bits // 8])


def test_fragments_that_add_up_past_the_limit_are_refused_at_the_last_header(small_hub: winerp.Hub) -> None:
    peer = open_hub(small_hub.port)
    first = hand_frame(BINARY, b"x" * 40_000, fin=False)
    second_header = hand_frame(CONTINUATION, length=30_000, length_bits=16)[:4]
    assert_fails(peer, 1009, first, second_header)


@pytest.mark.parametrize("size", [0, 1, 2], ids=["empty", "1-byte", "2-byte"])
def test_many_tiny_fragments_close_the_connection(small_hub: winerp.Hub, size: int) -> None:
    """A 64 KiB limit allows 1024 fragments per message; the 1025th is refused with 1009."""
    peer = open_hub(small_hub.port)
    frames = hand_frame(BINARY, b"x" * size, fin=False) + hand_frame(CONTINUATION, b"y" * size, fin=False) * 1100
    reason = assert_fails(peer, 1009, frames)
    assert "fragments" in reason


# --- closing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"), [(1000, "bye"), (1001, ""), (1008, "policy"), (3000, "app"), (4999, "é" * 40)]
)
def test_close_is_echoed_with_its_code(hub: winerp.Hub, code: int, reason: str) -> None:
    peer = registered(hub.port, _name())
    peer.send(peer.close(code, reason))
    got, _ = peer.expect_close()
    assert got == code


def test_close_with_no_body_is_answered_with_no_body(hub: winerp.Hub) -> None:
    peer = open_hub(hub.port)
    peer.send(peer.close())
    assert peer.expect_close()[0] == 1005  # how wsproto reports a close frame with no code


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_close_code_that_may_not_be_sent_is_refused(hub: winerp.Hub, code: int) -> None:
    peer = open_hub(hub.port)
    assert_fails(peer, 1002, hand_frame(CLOSE, code.to_bytes(2, "big")))


def test_close_body_of_one_byte_is_refused(hub: winerp.Hub) -> None:
    peer = open_hub(hub.port)
    assert_fails(peer, 1002, hand_frame(CLOSE, b"\x03"))


def test_data_after_close_is_ignored(hub: winerp.Hub) -> None:
    name = _name("after-close")
    peer = open_hub(hub.port)
    peer.send(peer.close(1000, "done") + hand_frame(BINARY, encode_frame(Hello(name, []))) + hand_frame(3, b"junk"))
    assert peer.expect_close()[0] == 1000  # not 1002: the junk after the close frame is not read
    assert name not in hub.clients


def test_close_handshake_completes(hub: winerp.Hub) -> None:
    """The hub answers a close and then ends the TCP connection (expect_close reads to EOF)."""
    name = _name()
    peer = registered(hub.port, name)
    peer.send(peer.close(1000, "finished"))
    assert peer.expect_close() == (1000, "")
    assert name not in hub.clients


# --- the same through a real hub, one byte at a time ----------------------------------------


def test_frames_sent_one_byte_at_a_time(hub: winerp.Hub) -> None:
    name = _name("drip")
    peer = open_hub(hub.port)
    data = peer.binary(encode_frame(Hello(name, []))) + peer.ping(b"drip")
    for index in range(len(data)):
        peer.send(data[index : index + 1])
    assert isinstance(decode_frame(peer.expect("binary")), Welcome)
    assert peer.expect("pong") == b"drip"
    peer.shut()


def test_endless_empty_fragments_close_the_connection_at_the_default_limit(hub: winerp.Hub) -> None:
    """The default 8 MiB limit allows 131,072 fragments; empty ones used to be taken forever."""
    peer = open_hub(hub.port)
    allowed = hub.max_message_size // 64
    empty = hand_frame(CONTINUATION, fin=False)
    peer.send(hand_frame(BINARY, fin=False))
    for _ in range(allowed // 8192 + 1):
        try:
            peer.send(empty * 8192)
        except OSError:
            break  # the hub closed after the last fragment it allows
    got, reason = peer.expect_close()
    assert got == 1009 and "fragments" in reason
