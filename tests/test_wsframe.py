"""The websocket framing layer alone: no sockets, byte streams cut every way."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websocket import ABNF

from winerp.wire.websocket import (
    FRAGMENT_BYTES,
    MIN_FRAGMENTS,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    FrameError,
    FrameReader,
    client_frame,
    close_payload,
    parse_close,
    python_unmask,
    server_frame,
    unmask,
)

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 70_000]


def _feed_in_pieces(reader: FrameReader, stream: bytes, seed: int) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    out: list[tuple[int, bytes]] = []
    position = 0
    while position < len(stream):
        step = rng.choice([1, 2, 3, 7, 100, 5000, 100_000])
        out += reader.feed(stream[position : position + step])
        position += step
    return out


@pytest.mark.parametrize("seed", range(4))
def test_client_frames_of_every_size_and_key_shape_arrive_whole(seed: int) -> None:
    """Our own frames (equal-byte keys) and websocket-client's (random keys) parse alike."""
    payloads = [os.urandom(size) for size in SIZES]
    stream = b"".join(client_frame(OP_BINARY, p) for p in payloads)
    stream += b"".join(ABNF.create_frame(p, ABNF.OPCODE_BINARY).format() for p in payloads)
    messages = _feed_in_pieces(FrameReader(masked=True, max_size=1 << 20), stream, seed)
    assert messages == [(OP_BINARY, p) for p in payloads * 2]


def test_server_frames_parse_at_the_client() -> None:
    payloads = [os.urandom(size) for size in SIZES]
    stream = b"".join(server_frame(OP_BINARY, p) for p in payloads)
    assert _feed_in_pieces(FrameReader(masked=False, max_size=1 << 20), stream, 1) == [(OP_BINARY, p) for p in payloads]


def test_masking_is_its_own_inverse_for_any_key() -> None:
    data = os.urandom(1001)
    for key in (b"\x00\x00\x00\x00", b"\x07\x07\x07\x07", b"\x01\x02\x03\x04"):
        assert unmask(unmask(data, key), key) == data
    assert unmask(b"\x00\x00\x00\x00\x00", b"\x01\x02\x03\x04") == b"\x01\x02\x03\x04\x01"


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 125, 8191, 16383, 16384, 16385, 24577, 70001])
@pytest.mark.parametrize("key", [b"\x00\x00\x00\x00", b"\x5c\x5c\x5c\x5c", b"\x12\x9a\x5c\xe7"])
def test_compiled_and_pure_masking_agree_with_the_rule(size: int, key: bytes) -> None:
    """Both ways give byte i XOR key[i % 4] (RFC 6455 section 5.3), whatever the size."""
    data = os.urandom(size)
    expected = bytes(byte ^ key[i % 4] for i, byte in enumerate(data))
    assert python_unmask(data, key) == expected
    assert unmask(data, key) == expected


def test_the_compiled_masking_is_in_use() -> None:
    """websockets is a dependency for its C masking: losing it silently would cost ~40x."""
    assert unmask is not python_unmask


def test_fragments_are_reassembled_around_control_frames() -> None:
    def part(opcode: int, payload: bytes, final: bool) -> bytes:
        return ABNF(fin=int(final), opcode=opcode, data=payload).format()

    stream = (
        part(OP_TEXT, b"he", False)
        + part(OP_PING, b"p", True)
        + part(OP_CONTINUATION, b"ll", False)
        + part(OP_CONTINUATION, b"o", True)
    )
    assert FrameReader(masked=True, max_size=100).feed(stream) == [(OP_PING, b"p"), (OP_TEXT, b"hello")]


def test_too_big_is_refused_from_the_header_alone() -> None:
    reader = FrameReader(masked=True, max_size=1000)
    header = client_frame(OP_BINARY, b"x" * 1001)[:8]
    with pytest.raises(FrameError) as caught:
        reader.feed(header)
    assert caught.value.code == 1009


def test_fragments_that_add_up_past_the_limit_are_refused() -> None:
    reader = FrameReader(masked=True, max_size=1000)
    first = ABNF(fin=0, opcode=OP_BINARY, data=b"x" * 600).format()
    rest = ABNF(fin=1, opcode=OP_CONTINUATION, data=b"x" * 600).format()
    with pytest.raises(FrameError) as caught:
        reader.feed(first + rest)
    assert caught.value.code == 1009


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (server_frame(OP_BINARY, b"unmasked"), 1002),
        (ABNF(fin=1, rsv1=1, opcode=OP_BINARY, data=b"x").format(), 1002),
        (bytes((0x83, 0x81)) + b"\x01\x02\x03\x04" + b"x", 1002),
        (ABNF(fin=0, opcode=OP_PING, data=b"x").format(), 1002),
        (ABNF(fin=1, opcode=OP_CONTINUATION, data=b"x").format(), 1002),
        (client_frame(OP_CLOSE, b"\x03"), 1002),
        (client_frame(OP_CLOSE, (999).to_bytes(2, "big")), 1002),
        (client_frame(OP_CLOSE, (1005).to_bytes(2, "big")), 1002),
        (client_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"\xff"), 1007),
        (bytes((0x82, 0x80 | 127)) + b"\xff" * 8 + b"\x00" * 4, 1002),
    ],
)
def test_framing_violations_name_their_close_code(frame: bytes, code: int) -> None:
    with pytest.raises(FrameError) as caught:
        FrameReader(masked=True, max_size=1 << 20).feed(frame)
    assert caught.value.code == code


def test_close_payload_round_trip_and_cut_to_fit() -> None:
    assert parse_close(close_payload(1001, "going away")) == (1001, "going away")
    assert parse_close(b"") == (None, "")
    long = close_payload(1008, "é" * 200)
    assert len(long) <= 125
    assert parse_close(long)[1] == "é" * 61


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.booleans())
def test_any_bytes_give_messages_or_a_frame_error(data: bytes, masked: bool) -> None:
    reader = FrameReader(masked=masked, max_size=200)
    try:
        for opcode, payload in reader.feed(data):
            assert opcode in (OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, 0xA)
            assert isinstance(payload, bytes)
    except FrameError as exc:
        assert exc.code in (1002, 1007, 1009)


def test_the_single_frame_shortcut_keeps_every_rule() -> None:
    """One whole frame per read takes a shortcut; it must refuse what the general path refuses."""
    small = FrameReader(masked=True, max_size=100)
    with pytest.raises(FrameError) as caught:
        small.feed(client_frame(OP_BINARY, b"x" * 101))
    assert caught.value.code == 1009
    with pytest.raises(FrameError):
        FrameReader(masked=True, max_size=1000).feed(server_frame(OP_BINARY, b"unmasked"))
    with pytest.raises(FrameError):
        FrameReader(masked=False, max_size=1000).feed(client_frame(OP_BINARY, b"masked"))
    for size in (0, 1, 125, 126, 127, 1000, 65535):
        payload = os.urandom(size)
        assert FrameReader(masked=True, max_size=1 << 20).feed(client_frame(OP_BINARY, payload)) == [
            (OP_BINARY, payload)
        ]
        assert FrameReader(masked=False, max_size=1 << 20).feed(server_frame(OP_BINARY, payload)) == [
            (OP_BINARY, payload)
        ]


# --- regressions ------------------------------------------------------------------------------


def _masked(first: int, payload: bytes) -> bytes:
    """A client frame with a given first byte (FIN, RSV, opcode), masked with a fixed key."""
    key = b"\x11\x22\x33\x44"
    assert len(payload) < 126
    return bytes((first, 0x80 | len(payload))) + key + unmask(payload, key)


@pytest.mark.parametrize("size", [0, 2])
def test_many_tiny_fragments_are_refused(size: int) -> None:
    """Each fragment costs memory beyond its payload: a message may have one per 64 bytes of the limit.

    Before the fix, 2-byte fragments of an 8 MiB message cost the hub about 225 MiB, and empty
    fragments were never refused at all.
    """
    limit = 8 * 1024 * 1024
    reader = FrameReader(masked=True, max_size=limit)
    allowed = limit // FRAGMENT_BYTES
    start = _masked(OP_BINARY, b"x" * size)
    more = _masked(OP_CONTINUATION, b"y" * size)
    assert reader.feed(start + more * (allowed - 1)) == []
    with pytest.raises(FrameError) as caught:
        reader.feed(more)
    assert caught.value.code == 1009
    # A small limit still allows a few fragments.
    small = FrameReader(masked=True, max_size=100)
    stream = (
        _masked(
            OP_BINARY,
            b"a",
        )
        + _masked(OP_CONTINUATION, b"") * (MIN_FRAGMENTS - 2)
        + _masked(0x80, b"z")
    )
    assert small.feed(stream) == [(OP_BINARY, b"az")]


@pytest.mark.parametrize("size", [0, 5, 125, 126, 127, 300, 65535, 65536])
def test_a_frame_cut_at_every_byte_offset(size: int) -> None:
    """A first read of 3 bytes of a 16-bit-length frame used to crash the one-frame shortcut."""
    payload = os.urandom(size)
    for frame, masked in ((client_frame(OP_BINARY, payload), True), (server_frame(OP_BINARY, payload), False)):
        offsets = range(len(frame) + 1) if len(frame) < 1000 else [*range(16), len(frame) - 1, len(frame)]
        for offset in offsets:
            reader = FrameReader(masked=masked, max_size=1 << 20)
            assert reader.feed(frame[:offset]) + reader.feed(frame[offset:]) == [(OP_BINARY, payload)], offset


def test_masking_keys_are_fresh_and_unpredictable() -> None:
    """RFC 6455 5.3 and 10.3: 32-bit keys from a strong entropy source (they were one random byte, four times)."""
    keys = [client_frame(OP_BINARY, b"x")[2:6] for _ in range(2000)]
    assert len(set(keys)) >= 1990
    assert sum(key[0] == key[1] == key[2] == key[3] for key in keys) < 5
    # Every byte position takes many values: all 32 bits are random.
    for position in range(4):
        assert len({key[position] for key in keys}) > 200


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 16, 1023, 16383, 16384, 16385, 65536, 100_001])
def test_masking_with_four_different_key_bytes(size: int) -> None:
    payload = os.urandom(size)
    key = b"\x01\x80\xfe\x33"
    expected = bytes(byte ^ key[index % 4] for index, byte in enumerate(payload))
    assert unmask(payload, key) == expected
    assert FrameReader(masked=True, max_size=1 << 20).feed(client_frame(OP_BINARY, payload)) == [(OP_BINARY, payload)]


def test_messages_before_a_bad_frame_are_returned() -> None:
    """A read with a good message and then a bad frame: the message comes out, then the error."""
    good = client_frame(OP_BINARY, b"good")
    ping = client_frame(OP_PING, b"p")
    bad = _masked(0x80 | 0x40 | OP_BINARY, b"rsv1")
    reader = FrameReader(masked=True, max_size=1000)
    assert reader.feed(good + ping + bad + good) == [(OP_BINARY, b"good"), (OP_PING, b"p")]
    assert reader.failure is not None and reader.failure.code == 1002
    with pytest.raises(FrameError):
        reader.feed(good)
    # A read that begins with the bad frame raises at once.
    with pytest.raises(FrameError):
        FrameReader(masked=True, max_size=1000).feed(bad + good)


def test_nothing_after_a_close_frame_is_read() -> None:
    reader = FrameReader(masked=True, max_size=1000)
    close = client_frame(OP_CLOSE, close_payload(1000, "bye"))
    assert reader.feed(client_frame(OP_BINARY, b"a") + close + b"\xff\xff garbage") == [
        (OP_BINARY, b"a"),
        (OP_CLOSE, close_payload(1000, "bye")),
    ]
    assert reader.closed and reader.failure is None
    assert reader.feed(client_frame(OP_BINARY, b"late")) == []


HEADER_ONLY = {
    "ping announcing 126 bytes": bytes((0x80 | OP_PING, 0x80 | 126)),
    "close announcing 127 (64-bit) length": bytes((0x80 | OP_CLOSE, 0x80 | 127)),
    "fragmented ping": bytes((OP_PING, 0x80 | 5)),
    "rsv1 on a binary frame": bytes((0xC0 | OP_BINARY, 0x80 | 100)),
    "rsv3 on a pong": bytes((0x90 | 0xA, 0x80 | 1)),
    "opcode 3": bytes((0x83, 0x80 | 126)),
    "opcode 11": bytes((0x8B, 0x80)),
    "an unmasked client frame": bytes((0x82, 126)),
    "a continuation with nothing to continue": bytes((0x80, 0x80 | 126)),
}


@pytest.mark.parametrize("what", list(HEADER_ONLY))
def test_bad_header_is_refused_before_any_payload(what: str) -> None:
    """Whatever the first two bytes decide is checked as soon as they are in, payload or not."""
    reader = FrameReader(masked=True, max_size=1 << 20)
    with pytest.raises(FrameError) as caught:
        reader.feed(HEADER_ONLY[what])
    assert caught.value.code == 1002


@pytest.mark.parametrize(("code", "extended"), [(126, (5).to_bytes(2, "big")), (127, (65535).to_bytes(8, "big"))])
def test_non_minimal_lengths_are_refused(code: int, extended: bytes) -> None:
    """RFC 6455 5.2: the minimal number of bytes MUST be used to encode the length."""
    with pytest.raises(FrameError) as caught:
        FrameReader(masked=True, max_size=1 << 20).feed(bytes((0x82, 0x80 | code)) + extended)
    assert caught.value.code == 1002
