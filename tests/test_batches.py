"""Batched messages through a live hub: several frames in one websocket message.

A client that says so in its Hello gets the small messages of one turn of the hub's loop
framed together, and sends its own that way once the hub's Welcome says it reads them
(`winerp.protocol.frames`). Raw websockets stand in for clients where the messages themselves
are looked at; real clients of both facades check that their users see nothing of it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
import websocket

import winerp
from winerp.protocol.frames import (
    BATCH_BYTES,
    Frame,
    Hello,
    Inform,
    Information,
    Request,
    Response,
    Welcome,
    batch_header,
    decode_frame,
    decode_message,
    decode_value,
    encode_frame,
    encode_value,
)

try:
    from security_tools import assert_serves, raw_ws, read_until_closed
except ImportError:  # tests/ imported as a package
    from tests.security_tools import assert_serves, raw_ws, read_until_closed

PROMPT = 10.0


@pytest.fixture
def hub() -> Iterator[winerp.Hub]:
    with winerp.Hub(port=0) as running:
        yield running


def _register(port: int, name: str, *, batches: bool) -> websocket.WebSocket:
    ws = raw_ws(port, timeout=PROMPT)
    ws.send_binary(encode_frame(Hello(name, [], batches=batches)))
    welcome = decode_frame(ws.recv())
    assert isinstance(welcome, Welcome) and welcome.batches  # this hub reads batches
    return ws


def _batch_of_informs(values: range, destination: str, size: int = 0) -> bytes:
    frames = [encode_frame(Inform([destination], msgspec.Raw(encode_value((i, b"x" * size))))) for i in values]
    return batch_header(len(frames)) + b"".join(frames)


def _read_informs(ws: websocket.WebSocket, count: int) -> list[list[Frame]]:
    """Read messages until ``count`` informs came; the frames of each message, skipping presence."""
    messages: list[list[Frame]] = []
    got = 0
    while got < count:
        frames = [frame for frame in decode_message(ws.recv()) if isinstance(frame, Information)]
        if frames:
            messages.append(frames)
            got += len(frames)
    return messages


def _values(messages: list[list[Frame]]) -> list[int]:
    return [decode_value(frame.data)[0] for frames in messages for frame in frames if isinstance(frame, Information)]


def test_a_batch_is_routed_frame_by_frame_and_reaches_a_reader_of_batches_batched(hub: winerp.Hub) -> None:
    reader = _register(hub.port, "reader", batches=True)
    sender = _register(hub.port, "sender", batches=True)
    sender.send_binary(_batch_of_informs(range(200), "reader"))
    sender.send_binary(_batch_of_informs(range(200, 300), "reader"))
    messages = _read_informs(reader, 300)
    assert _values(messages) == list(range(300))
    assert max(len(frames) for frames in messages) > 1  # what one turn routed left together
    assert_serves(hub.port)
    reader.close()
    sender.close()


def test_a_client_that_does_not_say_it_reads_batches_gets_one_frame_a_message(hub: winerp.Hub) -> None:
    reader = _register(hub.port, "old-reader", batches=False)
    sender = _register(hub.port, "sender", batches=True)
    sender.send_binary(_batch_of_informs(range(200), "old-reader"))
    frames = []
    while len(frames) < 200:
        message = reader.recv()
        assert message[1] < 0x80  # a frame's tag comes second; a batch's second byte starts a frame
        frame = decode_frame(message)
        if isinstance(frame, Information):
            frames.append([frame])
    assert _values(frames) == list(range(200))
    reader.close()
    sender.close()


def test_a_batch_the_hub_sends_stays_within_its_size(hub: winerp.Hub) -> None:
    reader = _register(hub.port, "reader", batches=True)
    sender = _register(hub.port, "sender", batches=True)
    for start in range(0, 180, 60):  # 60 informs of 1 KiB in each message sent
        sender.send_binary(_batch_of_informs(range(start, start + 60), "reader", size=1000))
    sizes = []
    frames: list[list[Frame]] = []
    while sum(len(f) for f in frames) < 180:
        message = reader.recv()
        sizes.append(len(message))
        frames.append([frame for frame in decode_message(message) if isinstance(frame, Information)])
    assert _values(frames) == list(range(180))
    assert max(sizes) <= BATCH_BYTES + 3  # the frames, and the batch's header
    reader.close()
    sender.close()


def test_what_a_batch_did_before_its_bad_frame_goes_out_before_the_connection_closes(hub: winerp.Hub) -> None:
    """An answer in a batch that ends with a protocol error still reaches its requester, at once."""
    answerer = raw_ws(hub.port, timeout=PROMPT)
    answerer.send_binary(encode_frame(Hello("answerer", ["r"], batches=True)))
    assert isinstance(decode_frame(answerer.recv()), Welcome)
    with winerp.sync.Client("asker", port=hub.port, reconnect=False) as asker:
        outcome: list[Any] = []
        started = time.monotonic()
        thread = threading.Thread(target=lambda: outcome.append(asker.request("r", "answerer", timeout=30)))
        thread.start()
        request = next(f for f in iter(lambda: decode_frame(answerer.recv()), None) if isinstance(f, Request))
        answer = encode_frame(Response(request.id, request.peer, msgspec.Raw(encode_value("answered"))))
        a_hub_frame = encode_frame(Welcome("x", False, 1.0, 1))  # a client never sends one: 1002
        answerer.send_binary(batch_header(2) + answer + a_hub_frame)
        thread.join(PROMPT)
        assert outcome == ["answered"] and time.monotonic() - started < PROMPT
        assert read_until_closed(answerer)[0] == 1002
    assert_serves(hub.port)


# --- real clients: a hub limit below the batch size, a burst of informs ----------------------

LIMIT = 2000  # the hub's limit on a message, well under BATCH_BYTES
BURST = 500


def _sync_receiver(port: int, got: list[Any], done: threading.Event) -> winerp.sync.Client:
    receiver = winerp.sync.Client("receiver", port=port, reconnect=False)

    @receiver.event
    def on_winerp_information(data: Any, source: str) -> None:
        got.append(data)
        if len(got) == BURST:
            done.set()

    receiver.start(timeout=PROMPT)
    return receiver


def test_a_sync_burst_under_a_small_hub_limit_arrives_whole_and_in_order() -> None:
    with winerp.Hub(port=0, max_message_size=LIMIT) as hub:
        got: list[Any] = []
        done = threading.Event()
        receiver = _sync_receiver(hub.port, got, done)
        with winerp.sync.Client("sender", port=hub.port, reconnect=False) as sender:
            for i in range(BURST):
                sender.inform([i, "x" * 150], "receiver")
            assert done.wait(PROMPT), f"{len(got)} of {BURST} informs arrived"
            assert got == [[i, "x" * 150] for i in range(BURST)]
            assert sender.is_ready and receiver.is_ready  # nobody was cut off for a message too big
        receiver.close()


def test_an_aio_burst_under_a_small_hub_limit_arrives_whole_and_in_order() -> None:
    async def main(port: int) -> None:
        got: list[Any] = []
        done = asyncio.Event()
        receiver = winerp.aio.Client("receiver", port=port, reconnect=False)

        @receiver.event
        async def on_winerp_information(data: Any, source: str) -> None:
            got.append(data)
            if len(got) == BURST:
                done.set()

        await receiver.start(timeout=PROMPT)
        async with winerp.aio.Client("sender", port=port, reconnect=False) as sender:
            for i in range(BURST):
                await sender.inform([i, "x" * 150], "receiver")
            await asyncio.wait_for(done.wait(), PROMPT)
            assert got == [[i, "x" * 150] for i in range(BURST)]
            assert sender.is_ready and receiver.is_ready  # nobody was cut off for a message too big
        await receiver.close()

    with winerp.Hub(port=0, max_message_size=LIMIT) as hub:
        asyncio.run(main(hub.port))
