"""Valid traffic cut anywhere gives the same messages: every byte offset, and random chunkings.

The streams are built by wsproto (client frames for the hub's reader, server frames for the
client's); `FrameReader` must give the same messages however the bytes are split between
reads. The hub is checked end to end in `test_hub.test_frames_sent_one_byte_at_a_time`.
"""

from __future__ import annotations

import random

import pytest
from wsproto.frame_protocol import FrameProtocol

from winerp.wire.websocket import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, FrameReader, close_payload


def _stream(*, client: bool, large: bool) -> tuple[bytes, list[tuple[int, bytes]]]:
    """Frames from wsproto's side ``client``, and the messages a reader must give for them."""
    proto = FrameProtocol(client=client, extensions=[])
    rng = random.Random(7)
    sizes = [0, 1, 125, 126, 127, 300] + ([65535, 65536, 200_000] if large else [])
    parts: list[bytes] = []
    expected: list[tuple[int, bytes]] = []
    for size in sizes:
        payload = rng.randbytes(size)
        parts.append(bytes(proto.send_data(payload)))
        expected.append((OP_BINARY, payload))
    text = "héllo wörld 𝄞 " * 20
    parts += [bytes(proto.send_data(text[:50], fin=False)), bytes(proto.ping(b"in between"))]
    parts += [
        bytes(proto.send_data(text[50:120], fin=False)),
        bytes(proto.pong(b"")),
        bytes(proto.send_data(text[120:])),
    ]
    expected += [(OP_PING, b"in between"), (OP_PONG, b""), (OP_TEXT, text.encode())]
    chunks = [rng.randbytes(40) for _ in range(5)]
    parts += [bytes(proto.send_data(chunk, fin=index == 4)) for index, chunk in enumerate(chunks)]
    expected.append((OP_BINARY, b"".join(chunks)))
    parts.append(bytes(proto.close(1000, "done")))
    expected.append((OP_CLOSE, close_payload(1000, "done")))
    return b"".join(parts), expected


def _feed(reader: FrameReader, pieces: list[bytes]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for piece in pieces:
        out += reader.feed(piece)
    return out


@pytest.mark.parametrize("client", [True, False], ids=["hub-reads-client-frames", "client-reads-hub-frames"])
def test_cut_in_two_at_every_byte_offset(client: bool) -> None:
    stream, expected = _stream(client=client, large=False)
    for offset in range(len(stream) + 1):
        reader = FrameReader(masked=client, max_size=1 << 20)
        assert _feed(reader, [stream[:offset], stream[offset:]]) == expected, offset


@pytest.mark.parametrize("client", [True, False], ids=["hub-reads-client-frames", "client-reads-hub-frames"])
def test_one_byte_at_a_time(client: bool) -> None:
    stream, expected = _stream(client=client, large=False)
    reader = FrameReader(masked=client, max_size=1 << 20)
    assert _feed(reader, [stream[index : index + 1] for index in range(len(stream))]) == expected


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("client", [True, False], ids=["hub-reads-client-frames", "client-reads-hub-frames"])
def test_random_chunkings(client: bool, seed: int) -> None:
    stream, expected = _stream(client=client, large=True)
    rng = random.Random(seed)
    pieces = []
    position = 0
    while position < len(stream):
        step = rng.choice([1, 2, 3, 4, 9, 10, 14, 100, 4096, 70_000])
        pieces.append(stream[position : position + step])
        position += step
    assert _feed(FrameReader(masked=client, max_size=1 << 20), pieces) == expected
