"""The websocket framing layer alone: no sockets, byte streams cut every way."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websocket import ABNF

from winerp.wsframe import (
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
