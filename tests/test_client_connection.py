"""The client's connection and its reader seat, on their own: real sockets, no hub.

`ReaderSeat` is the rule of who reads a connection (its thread, or a guest event loop);
`Connection` is one websocket with its writer, reader and closing. A socket pair stands in
for the hub's end, which speaks real websocket frames (`winerp.wire.websocket`).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import websocket

import winerp
from winerp.client.calls import Deadline
from winerp.client.connection import NOT_REGISTERED, Connection, ConnectionState
from winerp.client.seat import ReaderSeat, SeatState
from winerp.protocol.client import ClientProtocol
from winerp.protocol.frames import HUB, Frame, Pong, Welcome, batch_header, decode_message, encode_frame
from winerp.wire.close import CloseCode
from winerp.wire.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_TEXT,
    FrameReader,
    close_payload,
    parse_close,
    server_frame,
)

try:
    from conftest import wait_for
except ImportError:  # run from the repository root as a package
    from tests.conftest import wait_for

PROMPT = 5.0  # generous: "at once" on a loaded machine


def _in_thread(function: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(function()), daemon=True)
    thread.start()
    return thread, result


# --- the seat ------------------------------------------------------------------------------


def test_seat_states_go_thread_guest_closed_and_closed_is_final() -> None:
    seat = ReaderSeat()
    assert seat.state is SeatState.THREAD
    assert seat.seat_guest(lambda: True)
    assert seat.state is SeatState.GUEST
    assert not seat.seat_guest(lambda: True)  # one guest at a time
    seat.close()
    assert seat.state is SeatState.CLOSED
    assert not seat.seat_guest(lambda: True)
    seat.close()  # idempotent
    assert seat.state is SeatState.CLOSED


def test_one_reader_at_a_time_and_a_second_one_does_not_wait() -> None:
    seat = ReaderSeat()
    assert seat.try_enter()
    thread, result = _in_thread(seat.try_enter)
    thread.join(PROMPT)
    assert result == [False]
    seat.leave()
    assert seat.try_enter()
    seat.leave()


def test_stand_by_returns_at_once_when_the_thread_holds_the_seat() -> None:
    seat = ReaderSeat()
    thread, result = _in_thread(lambda: seat.stand_by(60, lambda: True))
    thread.join(PROMPT)
    assert result == [False]


def test_close_wakes_a_thread_standing_by() -> None:
    seat = ReaderSeat()
    seat.seat_guest(lambda: True)
    thread, result = _in_thread(lambda: seat.stand_by(60, lambda: True))
    time.sleep(0.05)  # not needed for correctness: gives the thread time to start waiting
    seat.close()
    thread.join(PROMPT)
    assert result == [False]


def test_a_stalled_guest_lets_the_thread_read_what_waits() -> None:
    seat = ReaderSeat()
    seat.seat_guest(lambda: True)
    assert seat.stand_by(0.01, lambda: True)  # bytes wait, the guest read nothing: read for it
    assert not seat.stand_by(0.01, lambda: False)  # nothing waits: nothing to do
    assert seat.state is SeatState.GUEST


def test_a_guest_that_reads_keeps_the_seat_to_itself() -> None:
    seat = ReaderSeat()

    def reads_meanwhile() -> bool:
        seat.note_read()  # the guest read while the thread stood by
        return True

    seat.seat_guest(reads_meanwhile)
    assert not seat.stand_by(0.01, lambda: True)
    assert seat.state is SeatState.GUEST


def test_a_guest_that_can_no_longer_read_gives_the_seat_back() -> None:
    seat = ReaderSeat()
    seat.seat_guest(lambda: False)  # e.g. its event loop was closed
    assert not seat.stand_by(0.01, lambda: True)
    assert seat.state is SeatState.THREAD
    assert seat.seat_guest(lambda: True)  # a new guest may come


# --- the connection ------------------------------------------------------------------------


class Owner:
    """Records what a connection tells the core."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.closed: list[Connection] = []
        self.ticks = 0

    def frame_received(self, connection: Connection, frame: Frame) -> None:
        self.frames.append(frame)

    def connection_closed(self, connection: Connection) -> None:
        self.closed.append(connection)

    def tick(self, now: float) -> None:
        self.ticks += 1


class HubEnd:
    """The hub's end of a socket pair: sends server frames, reads the client's frames."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader(masked=True, max_size=1 << 20)
        self.pending: list[tuple[int, bytes]] = []

    def send(self, opcode: int, payload: bytes) -> None:
        self.sock.sendall(server_frame(opcode, payload))

    def receive(self) -> tuple[int, bytes]:
        self.sock.settimeout(PROMPT)
        while not self.pending:
            data = self.sock.recv(65536)
            assert data, "the client closed the socket"
            self.pending.extend(self.reader.feed(data))
        return self.pending.pop(0)


@pytest.fixture
def pair() -> Iterator[tuple[Connection, HubEnd, Owner]]:
    client_sock, hub_sock = socket.socketpair()
    ws = websocket.WebSocket()
    ws.sock = client_sock
    owner = Owner()
    connection = Connection("c", ws, ClientProtocol("c", 1 << 20, time.monotonic()), owner)
    yield connection, HubEnd(hub_sock), owner
    connection.close()
    connection.release()
    hub_sock.close()


def _welcome(on_hold: bool = False) -> Welcome:
    return Welcome("c", on_hold, 1.0, 1 << 20)


def test_connection_states_from_open_to_closed(pair: tuple[Connection, HubEnd, Owner]) -> None:
    connection, _, owner = pair
    assert connection.state is ConnectionState.OPEN
    assert not connection.welcome(_welcome())  # no Welcome before the Hello
    assert connection.hello_sent()
    assert connection.state is ConnectionState.REGISTERING
    assert connection.welcome(_welcome(on_hold=True))
    assert connection.state is ConnectionState.HELD
    assert connection.welcome(_welcome())
    assert connection.state is ConnectionState.READY and connection.welcomed
    assert connection.close()
    assert connection.state is ConnectionState.CLOSED
    assert not connection.close()  # idempotent: the owner is told once
    assert owner.closed == [connection]
    assert not connection.welcome(_welcome())


def test_frames_sent_reach_the_hub_as_masked_websocket_frames(pair: tuple[Connection, HubEnd, Owner]) -> None:
    connection, hub, _ = pair
    connection.writer.send(b"first")
    connection.writer.send(b"second")
    assert hub.receive() == (OP_BINARY, b"first")
    assert hub.receive() == (OP_BINARY, b"second")


def test_frames_read_are_handed_to_the_owner(pair: tuple[Connection, HubEnd, Owner]) -> None:
    connection, hub, owner = pair
    hub.send(OP_BINARY, encode_frame(Pong(7, "hub")))
    hub.send(OP_BINARY, encode_frame(Pong(8, "hub")))
    deadline = time.monotonic() + PROMPT
    while len(owner.frames) < 2 and time.monotonic() < deadline:
        connection.read_available()
    assert owner.frames == [Pong(7, "hub"), Pong(8, "hub")]


def test_a_batch_read_is_handed_to_the_owner_frame_by_frame(pair: tuple[Connection, HubEnd, Owner]) -> None:
    connection, hub, owner = pair
    pongs = [Pong(i, HUB) for i in range(20)]
    hub.send(OP_BINARY, batch_header(20) + b"".join(encode_frame(pong) for pong in pongs))
    deadline = time.monotonic() + PROMPT
    while len(owner.frames) < 20 and time.monotonic() < deadline:
        connection.read_available()
    assert owner.frames == pongs


def _welcomed(connection: Connection, welcome: Welcome) -> None:
    """Take ``welcome`` as the core does: the protocol reads it, then the connection."""
    connection.hello_sent()
    connection.protocol.receive(encode_frame(welcome), time.monotonic())
    assert connection.welcome(welcome)


def _queued_together(connection: Connection, messages: list[tuple[int, bytes]]) -> None:
    """Send ``messages`` while the writer is busy, so that they leave in one write."""
    writer = connection.writer
    with writer.lock:  # the flusher thread, woken by the first, waits here for the rest
        for opcode, payload in messages:
            if opcode == OP_BINARY:
                writer.send_soon(payload, crowded=True)
            else:
                writer.send(payload, opcode)  # the lock is taken: queued behind the others


def test_frames_sent_together_leave_as_batches_within_the_hubs_limit(
    pair: tuple[Connection, HubEnd, Owner],
) -> None:
    connection, hub, _ = pair
    _welcomed(connection, Welcome("c", False, 1.0, 100, batches=True))
    pongs = [Pong(i, HUB) for i in range(5)] + [Pong(5, "x" * 80), Pong(6, HUB), Pong(7, HUB)]
    sent = [(OP_BINARY, encode_frame(pong)) for pong in pongs]
    _queued_together(connection, [*sent[:7], (OP_PING, b"p"), sent[7]])
    # At most 100 bytes a message: pongs 0-4 (4 bytes each) together; the long pong 5 does not
    # fit with them, 6 does with it; a control frame is never in a batch; 7 is alone.
    got = [hub.receive() for _ in range(4)]
    assert [opcode for opcode, _ in got] == [OP_BINARY, OP_BINARY, OP_PING, OP_BINARY]
    assert [decode_message(got[i][1]) for i in (0, 1, 3)] == [pongs[:5], pongs[5:7], pongs[7:]]
    assert got[3][1] == sent[7][1]  # one frame: a message of its own, not a batch of one
    assert all(len(payload) <= 100 for _, payload in got)


def test_a_hub_that_does_not_read_batches_gets_one_frame_per_message(
    pair: tuple[Connection, HubEnd, Owner],
) -> None:
    connection, hub, _ = pair
    _welcomed(connection, Welcome("c", False, 1.0, 1 << 20))  # a hub from before batches
    pongs = [encode_frame(Pong(i, HUB)) for i in range(5)]
    _queued_together(connection, [(OP_BINARY, pong) for pong in pongs])
    assert [hub.receive() for _ in range(5)] == [(OP_BINARY, pong) for pong in pongs]


def test_the_hubs_close_frame_is_answered_then_the_connection_closes(
    pair: tuple[Connection, HubEnd, Owner],
) -> None:
    connection, hub, owner = pair
    hub.send(OP_CLOSE, close_payload(CloseCode.GOING_AWAY, "restarting"))
    deadline = time.monotonic() + PROMPT
    while connection.state is not ConnectionState.CLOSED and time.monotonic() < deadline:
        connection.read_available()
    assert connection.state is ConnectionState.CLOSED and owner.closed == [connection]
    assert (connection.close_code, connection.close_reason) == (CloseCode.GOING_AWAY, "restarting")
    opcode, payload = hub.receive()
    assert opcode == OP_CLOSE and parse_close(payload)[0] == CloseCode.GOING_AWAY


def test_a_text_message_fails_the_connection_with_1002(pair: tuple[Connection, HubEnd, Owner]) -> None:
    connection, hub, _ = pair
    hub.send(OP_TEXT, b"{}")
    deadline = time.monotonic() + PROMPT
    while connection.state is not ConnectionState.CLOSED and time.monotonic() < deadline:
        connection.read_available()
    assert connection.state is ConnectionState.CLOSED
    opcode, payload = hub.receive()
    assert opcode == OP_CLOSE and parse_close(payload)[0] == CloseCode.PROTOCOL_ERROR


def test_close_with_sends_the_close_frame_first(pair: tuple[Connection, HubEnd, Owner]) -> None:
    connection, hub, owner = pair
    connection.hello_sent()
    connection.close_with(CloseCode.NORMAL, "client closing")
    assert connection.state is ConnectionState.CLOSED and owner.closed == [connection]
    opcode, payload = hub.receive()
    assert opcode == OP_CLOSE and parse_close(payload) == (CloseCode.NORMAL, "client closing")


def test_serve_ends_when_the_hub_does_not_register_in_time(pair: tuple[Connection, HubEnd, Owner]) -> None:
    connection, _, owner = pair
    connection.hello_sent()
    thread, _ = _in_thread(lambda: connection.serve(Deadline(0.2)))
    thread.join(PROMPT)
    assert not thread.is_alive()
    assert connection.lost == NOT_REGISTERED
    assert connection.state is ConnectionState.CLOSED and owner.closed == [connection]


def test_serve_ends_at_once_when_closed_from_another_thread_while_a_guest_reads(
    pair: tuple[Connection, HubEnd, Owner],
) -> None:
    connection, _, _ = pair
    connection.hello_sent()
    connection.welcome(_welcome())
    reads: list[Callable[[], bool]] = []

    def lend_reader(fileno: int, read: Callable[[], bool]) -> Callable[[], bool]:
        reads.append(read)
        return lambda: True

    connection.lend(lend_reader)
    assert connection.seat.state is SeatState.GUEST
    assert reads[0]() is True  # nothing to read yet; the connection is open
    thread, _ = _in_thread(lambda: connection.serve(Deadline(None)))
    time.sleep(0.05)  # not needed for correctness: lets the thread stand by
    connection.close()
    thread.join(PROMPT)
    assert not thread.is_alive()
    assert reads[0]() is False  # the guest learns that the connection is gone


# --- closing a client while it connects -----------------------------------------------------


class HeldProxy:
    """A TCP relay to the hub that holds its first connection until released."""

    def __init__(self, hub_port: int) -> None:
        self._hub_port = hub_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.accepted = threading.Event()
        self.release = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._relay, daemon=True).start()

    def _relay(self) -> None:
        client, _ = self._listener.accept()
        self._sockets.append(client)
        self.accepted.set()
        self.release.wait(PROMPT * 2)
        upstream = socket.create_connection(("127.0.0.1", self._hub_port))
        self._sockets.append(upstream)
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.release.set()
        for sock in self._sockets:
            sock.close()


def test_a_client_closed_while_it_connects_does_not_register_afterwards(hub: winerp.Hub) -> None:
    """close() during the opening: the connection that opens after it is closed, not served.

    Before the fix the client's thread went on to register and serve that connection, and
    close() returned only when its wait for the thread gave up (5 s), leaving the thread.
    """
    proxy = HeldProxy(hub.port)
    client = winerp.sync.Client("late", port=proxy.port, reconnect=False)
    outcome: list[BaseException] = []

    def start() -> None:
        try:
            client.start()
        except winerp.WinerpError as exc:
            outcome.append(exc)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    try:
        assert proxy.accepted.wait(PROMPT)  # the client's opening handshake is held
        closer = threading.Thread(target=client.close, daemon=True)
        closer.start()

        def closed() -> bool:
            try:
                client.wait_until_ready(0)
            except winerp.ClientNotReadyError:
                return True
            except winerp.RequestTimeout:
                return False
            return False

        wait_for(closed, timeout=PROMPT)  # close() has begun
        proxy.release.set()  # the handshake completes now, after close()
        closer.join(PROMPT)
        assert not closer.is_alive()
        assert "winerp-reader-late" not in [thread.name for thread in threading.enumerate()]
        assert "late" not in hub.clients
        starter.join(PROMPT)
        assert len(outcome) == 1 and isinstance(outcome[0], winerp.ClientNotReadyError)
    finally:
        proxy.close()


# --- the writer --------------------------------------------------------------------------------


def test_every_frame_sent_from_many_threads_leaves_without_a_later_write() -> None:
    """No frame waits in the writer's queue for a write that nobody will make.

    Threads send at once, some frames straight away and some through the flusher thread
    (``crowded``), in many short rounds; after each round every frame must reach the other
    end with no further sends (a stuck frame would wait for the next heartbeat).
    """
    from winerp.client.writer import Writer

    ours, theirs = socket.socketpair()
    failures: list[str] = []
    writer = Writer(
        ours, "test", on_failure=lambda: failures.append("write failed"), on_bug=lambda exc: failures.append(repr(exc))
    )
    reader = FrameReader(masked=True, max_size=1 << 20)
    theirs.settimeout(2)
    try:
        for round_number in range(300):
            threads = [
                threading.Thread(target=_send_some, args=(writer, f"{round_number}-{slot}".encode(), slot % 2 == 0))
                for slot in range(4)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            expected, got = 4 * 5, 0
            while got < expected:
                try:
                    data = theirs.recv(1 << 16)
                except TimeoutError:
                    pytest.fail(f"round {round_number}: {expected - got} frame(s) left in the queue, unwritten")
                got += len(reader.feed(data))
        assert not failures
    finally:
        writer.stop()
        writer.join()
        ours.close()
        theirs.close()


def _send_some(writer: Any, tag: bytes, crowded: bool) -> None:
    for number in range(5):
        writer.send_soon(tag + b"-%d" % number, crowded=crowded)
