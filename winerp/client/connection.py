"""One live websocket to the hub: its socket, its writer, its reader seat and its closing.

A `Connection` is made per connection attempt, once the websocket is open, and is done for
good once `CLOSED`: a reconnect makes a new one. It knows the wire (websocket frames, the
close handshake, the heartbeat) and hands every protocol frame it reads to its `Owner`,
the client core, which knows what frames mean.

Its life, one state (`ConnectionState`)::

    OPEN --Hello sent--> REGISTERING --Welcome--> HELD or READY (a later Welcome: READY)
    any of those --close_with(): our close frame--> CLOSING --> CLOSED
    any of those --close(): a drop, the hub's close, a failed write--> CLOSED

Lock order on the client side (a thread holding one lock may take only locks below it)::

    1. ReaderSeat, the right to read   (try_enter only: never waited for)
    2. Writer.lock                     (the right to write the socket; winerp.client.writer)
    3. ClientCore._lock                (routes, current connection, ready waiters, life)
    4. leaves, held for a few lines, taking no other lock:
       Connection._state_lock, ReaderSeat._turn, Gathering._lock, Writer._start_lock,
       the opening watchdog's lock, the facades' worker pools' locks

A reader holds the seat while it dispatches, and dispatching writes (a pong, a route's
answer), so (1) comes before (2); a failed write closes the connection, which tells the
core, so (2) comes before (3). The core never writes while holding its own lock.
Listeners of calls (the facades') run under (1) and must not block.
"""

from __future__ import annotations

import enum
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Protocol

import websocket

from .. import errors
from ..protocol.client import ClientProtocol
from ..protocol.frames import BATCH_BYTES, Frame, Welcome
from ..wire.close import CloseCode
from ..wire.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameReader,
    close_payload,
    parse_close,
)
from .calls import Deadline
from .seat import ReaderSeat, SeatState
from .writer import Writer

__all__ = ["Connection", "ConnectionState", "LendReader", "Owner", "receive_limit"]

logger = logging.getLogger("winerp.client")

# `Connection.lost` of a connection the hub did not register by the attempt's deadline.
NOT_REGISTERED = "no registration in time"
_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
# Bytes asked of the socket per read: a burst of small messages comes in one recv.
_READ_SIZE = 262144
# The hub enforces the size limits; a client accepts anything the hub may forward. The
# bound only stops a nonsense length from making the client buffer forever; it is raised
# when a hub announces a larger limit (see `receive_limit`).
_MIN_RECEIVE_LIMIT = 1 << 31

# A facade's offer to read a connection (see `winerp.client.core.Hooks.lend_reader`).
LendReader = Callable[[int, Callable[[], bool]], "Callable[[], bool] | None"]


def receive_limit(max_message_size: int) -> int:
    """The largest message a client accepts when messages up to ``max_message_size`` flow.

    Twice the limit, plus room for the envelope: a forwarded message is the sender's
    payload re-wrapped by the hub (its name, the route), never a multiple of it.
    """
    return max(_MIN_RECEIVE_LIMIT, 2 * max_message_size + 1024)


def _readable(sock: socket.socket, timeout: float, tls: bool = False) -> bool:
    """True when a read of ``sock`` would not block (False once ``timeout`` passed).

    An SSL socket's recv returns at most one TLS record; the rest waits in the SSL buffer,
    where select() cannot see it.
    """
    if tls and sock.pending():  # type: ignore[attr-defined]
        return True
    return bool(select.select([sock], [], [], timeout)[0])


class ConnectionState(enum.Enum):
    """Where one connection stands."""

    OPEN = "open"  # the websocket is open; no Hello sent yet
    REGISTERING = "registering"  # the Hello is sent: routes added now go as AddRoutes
    HELD = "held"  # welcomed, on hold: another client holds the name
    READY = "ready"  # welcomed: requests flow
    CLOSING = "closing"  # our close frame is on its way; nothing new is started
    CLOSED = "closed"  # over: nothing is read or written any more


class Owner(Protocol):
    """What a connection tells the client core."""

    def frame_received(self, connection: Connection, frame: Frame) -> None:
        """A protocol frame from the hub (on the thread that read it, seated)."""

    def connection_closed(self, connection: Connection) -> None:
        """``connection`` is CLOSED (once, on the thread that closed it)."""

    def tick(self, now: float) -> None:
        """A tick of the connection's thread (every quarter heartbeat while it serves)."""


class _HubClosed(Exception):
    """The hub closed the websocket (its close frame was read and answered)."""


class Connection:
    """One open websocket to the hub. Thread-safe: `send` from any thread; see the lock order above.

    Args:
        name: The client's name (for the log).
        ws: The open websocket (its socket is read and written here, raw).
        protocol: This connection's protocol state.
        owner: The core, told of every frame and of the end.
    """

    def __init__(self, name: str, ws: websocket.WebSocket, protocol: ClientProtocol, owner: Owner) -> None:
        self.name = name
        self.ws = ws
        self.protocol = protocol
        self._owner = owner
        assert ws.sock is not None
        self.sock: socket.socket = ws.sock
        self.tls = isinstance(ws.sock, ssl.SSLSocket)
        self.state = ConnectionState.OPEN
        self._state_lock = threading.Lock()
        self.seat = ReaderSeat()
        self.reader = FrameReader(masked=False, max_size=receive_limit(protocol.max_message_size))
        self.writer = Writer(self.sock, name, on_failure=self.close, on_bug=self.abort)
        # How it ended, for the log and the reconnect policy (not states: what happened).
        self.welcomed = False  # the hub welcomed the client on it (ready or on hold)
        self.close_code: int | None = None
        self.close_reason = ""
        self.lost = ""  # why it ended when no close frame says it
        # Reused by every read: a fresh 256 KiB bytes object per recv() would cost an mmap,
        # an mremap and a munmap each time.
        self._buffer = bytearray(_READ_SIZE)
        self._view = memoryview(self._buffer)

    # state

    def _move(self, new: ConnectionState, *allowed: ConnectionState) -> bool:
        """Go to ``new`` if the state is one of ``allowed``; True if it did."""
        with self._state_lock:
            if self.state not in allowed:
                return False
            self.state = new
            return True

    def hello_sent(self) -> bool:
        """The Hello is out: from now on new routes go as AddRoutes. False if closed meanwhile."""
        return self._move(ConnectionState.REGISTERING, ConnectionState.OPEN)

    def welcome(self, welcome: Welcome) -> bool:
        """The hub's Welcome: READY, or HELD when on hold. False if the connection is ending."""
        self.reader.max_size = max(self.reader.max_size, receive_limit(welcome.max_message_size))
        # A hub that reads batches gets small frames sent together as one, within its limit.
        self.writer.batch_limit = min(self.protocol.max_message_size, BATCH_BYTES) if welcome.batches else 0
        new = ConnectionState.HELD if welcome.on_hold else ConnectionState.READY
        moved = self._move(new, ConnectionState.REGISTERING, ConnectionState.HELD, ConnectionState.READY)
        self.welcomed = self.welcomed or moved
        return moved

    # closing

    def close_with(self, code: CloseCode, reason: str) -> None:
        """Close: our close frame (written before anything is shut), then `close`."""
        if self._move(ConnectionState.CLOSING, *_OPEN_STATES):
            self.writer.send(close_payload(code, reason), OP_CLOSE, wait=True)
        self.close()

    def close(self) -> bool:
        """End the connection: wake its readers, shut the socket, tell the owner. Idempotent.

        True for the call that closed it. The socket's descriptor stays open (a reader may
        still be inside a system call on it) until `release`.
        """
        if not self._move(ConnectionState.CLOSED, *_OPEN_STATES, ConnectionState.CLOSING):
            return False
        self.seat.close()  # a standing-by reader thread sees the end at once
        self.writer.stop()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._owner.connection_closed(self)
        return True

    def release(self) -> None:
        """Close the socket's descriptor; for the thread that serves the connection, once it is over.

        The writer's flusher thread (if any) is over first: closing the client leaves no
        thread of it behind.
        """
        self.writer.join()
        try:
            self.ws.shutdown()  # type: ignore[no-untyped-call]
        except Exception:  # noqa: BLE001 - nothing to report on a socket being thrown away
            pass

    def abort(self, exc: Exception) -> None:
        """An unexpected error (a bug) while serving: log it, close with 1011.

        Call from the ``except`` block, so the log has the traceback. The core's thread
        then reconnects as after any drop, per the client's policy.
        """
        logger.exception("client %r: unexpected error; closing the connection (1011)", self.name)
        self.lost = f"unexpected error in the client: {exc!r}"
        self.close_with(CloseCode.INTERNAL_ERROR, "internal error in the client")

    # the connection's own thread

    def serve(self, registration: Deadline) -> None:
        """Read (or stand by for a guest) and keep the heartbeat until the connection is CLOSED.

        Until the hub welcomes the client, ``registration`` bounds the wait: a hub that
        accepts the websocket but never answers the Hello ends the attempt in time.
        """
        tick = self.protocol.heartbeat / 4
        next_beat = 0.0
        try:
            while self.state is not ConnectionState.CLOSED:
                now = time.monotonic()
                if not self.welcomed and registration.passed(now):
                    self.lost = NOT_REGISTERED
                    break
                if now >= next_beat:
                    self._beat(now)
                    next_beat = now + tick
                if self.seat.state is SeatState.GUEST:
                    if self.seat.stand_by(tick, self._unread):
                        self.read_available()
                elif _readable(self.sock, tick, self.tls):
                    self.read_available()
        except errors.ConnectionLost as exc:  # the heartbeat found the hub silent
            self.lost = str(exc)
        except (OSError, ValueError) as exc:  # select() on a socket close() shut
            self._log_read_error(exc)
        except Exception as exc:  # noqa: BLE001 - a bug: logged by abort; costs this connection only
            self.abort(exc)
        finally:
            self.close()

    def _beat(self, now: float) -> None:
        if self.seat.state is SeatState.GUEST and self._unread():
            self.protocol.heard(now)  # the hub spoke; the guest has yet to read it
        beat = self.protocol.heartbeat_due(now)
        if beat is not None:
            self.writer.send(beat)
        self._owner.tick(now)

    def _unread(self) -> bool:
        return _readable(self.sock, 0, self.tls)

    def lend(self, lend_reader: LendReader) -> None:
        """Let a guest (the facade's event loop) read from now on, if it offers to."""
        if self.seat.state is not SeatState.THREAD:
            return

        def read() -> bool:
            try:
                self.read_available()
            except Exception as exc:  # noqa: BLE001 - a bug: logged by abort; the loop reads on
                self.abort(exc)
            return self.state is not ConnectionState.CLOSED

        can_read = lend_reader(self.sock.fileno(), read)
        if can_read is not None:
            self.seat.seat_guest(can_read)

    # reading

    def read_available(self) -> None:
        """Read what has arrived, unless another reader is seated; never blocks.

        The one way in to `_read_once`, for the connection's own thread, a guest and the
        stand-by alike. Errors close the connection here.
        """
        seat = self.seat
        if not seat.try_enter():
            return
        try:
            # Another reader may have taken what woke this one: never block here. A plain
            # socket is read without waiting; TLS (no recv flags) is checked first.
            tls = self.tls
            if self.state is not ConnectionState.CLOSED and ((_MSG_DONTWAIT and not tls) or self._unread()):
                self._read_once(_MSG_DONTWAIT if not tls else 0)
        except BlockingIOError:
            pass
        except _HubClosed:
            self.close()
        except (FrameError, errors.ProtocolError) as exc:
            self._log_read_error(exc)
            # Fail the websocket as RFC 6455 section 7.1.7 asks: a close frame with the
            # reason first (1002 protocol error, 1007 invalid data, 1009 too big), then close.
            code, reason = (
                (exc.code, exc.reason) if isinstance(exc, FrameError) else (CloseCode.PROTOCOL_ERROR, str(exc))
            )
            self.writer.send_last(close_payload(code, reason))
            self.close()
        except (OSError, ValueError) as exc:
            self._log_read_error(exc)
            self.close()
        finally:
            seat.leave()

    def _log_read_error(self, exc: Exception) -> None:
        if isinstance(exc, (FrameError, errors.ProtocolError)):
            logger.error("client %r: bad data from the hub (%s); dropping the connection", self.name, exc)
        elif self.state in _OPEN_STATES:
            # ValueError: close() on another thread closed the socket under select().
            logger.info("client %r: connection lost: %s", self.name, exc)

    def _read_once(self, flags: int) -> None:
        """One read from the socket, and every message it completes handled. Be seated.

        Raises:
            _HubClosed: the hub closed the websocket.
            FrameError: the hub broke the framing rules (after the messages before the bad
                frame were handled).
            ProtocolError, OSError, ValueError: the connection is broken.
        """
        data = self._recv(flags)
        if data is None:
            return
        self.seat.note_read()
        messages = self.reader.feed(data)
        now = time.monotonic()
        receive = self.protocol.receive
        deliver = self._owner.frame_received
        # Read on the facade's loop, what handlers send back straight away leaves in one
        # write after the last message (see `Writer.gather`).
        gathering = self.writer.gather(len(messages))
        try:
            for opcode, payload in messages:
                if opcode != OP_BINARY:
                    if self.state is ConnectionState.CLOSED:
                        return  # closed meanwhile (close(), a failed write): ignore the rest
                    self._control(opcode, payload)
                    continue
                frames = receive(payload, now)
                if len(frames) > 1 and not gathering:
                    gathering = self.writer.gather(len(frames))  # a batch: as if read apart
                for frame in frames:
                    if self.state is ConnectionState.CLOSED:
                        return
                    deliver(self, frame)
        finally:
            if gathering:
                self.writer.write_gathered()
        if self.reader.failure is not None:
            raise self.reader.failure  # the messages before the bad frame went through

    def _recv(self, flags: int) -> bytes | None:
        """What one recv gives (with what TLS holds buffered); None for a partial TLS record."""
        sock = self.sock
        try:
            size = sock.recv_into(self._buffer, 0, flags)
        except ssl.SSLWantReadError:
            return None  # a partial TLS record: wait for the rest
        if not size:
            raise ConnectionError("the hub closed the connection")
        data = self._view[:size].tobytes()
        if self.tls and sock.pending():  # type: ignore[attr-defined]
            parts = [data]
            while sock.pending():  # type: ignore[attr-defined]
                parts.append(sock.recv(_READ_SIZE))
            data = b"".join(parts)
        return data

    def _control(self, opcode: int, payload: bytes) -> None:
        """A websocket frame other than a binary message."""
        if opcode == OP_CLOSE:
            self._note_close(payload)
            # Answer the hub's close, echoing its code as RFC 6455 section 5.5.1 suggests,
            # before the socket is shut.
            self.writer.send_last(payload[:2])
            raise _HubClosed
        if opcode == OP_PING:
            self.writer.send(payload, OP_PONG)
        elif opcode == OP_TEXT:
            raise errors.ProtocolError("the hub sent a text message on a native connection")
        # OP_PONG: nothing to do (the heartbeat is a protocol Ping, not a websocket one).

    def _note_close(self, data: bytes) -> None:
        code, reason = parse_close(data)
        if code is not None:
            self.close_code = code
            self.close_reason = reason
            if code != CloseCode.NORMAL:
                logger.warning("client %r: the hub closed the connection: %d %s", self.name, code, reason)


_OPEN_STATES = (ConnectionState.OPEN, ConnectionState.REGISTERING, ConnectionState.HELD, ConnectionState.READY)
