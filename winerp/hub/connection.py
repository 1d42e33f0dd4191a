"""One client connection at the hub: its socket, its output, and the one way it ends.

A connection goes through the stages of `Stage`, in order, and never back::

    TLS -> HTTP -> OPEN -> CLOSING -> HALF_CLOSED -> CLOSED
     (TLS only    (the      (our last bytes   (they are out, our
     for wss://)  upgrade)  are queued)       side is shut)

There are two ways to end one, both here:

- `HubConnection.close` (graceful): the close frame is queued after whatever is already
  queued, then the connection waits, reading and dropping what still arrives, until the
  peer closes its side or the grace period ends (`closing_overdue`, asked by the hub's sweep).
  `HubConnection.finish` is its second half, for an ending whose last bytes are already
  queued (an HTTP refusal, the answer to the peer's close frame).
- `HubConnection.abort` (at once): for a peer that went silent, does not read, or met a bug
  in the hub. The close frame, if one is given, is sent only if it can leave at once.

Both end in `Connections.release`, which tells the router the client left. Only the hub's
loop thread touches any of this.
"""

from __future__ import annotations

import enum
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..protocol.codec import Message
from ..protocol.frames import batch_header
from ..wire.close import CloseCode
from ..wire.websocket import OP_BINARY, OP_CLOSE, OP_TEXT, close_payload, parse_close, server_frame, server_header

if TYPE_CHECKING:
    from ..protocol.router import Session
    from ..wire.websocket import FrameReader
    from .poller import Poller

__all__ = ["Stage", "HubConnection", "Connections", "CLOSING_GRACE", "CLOSING_LIMIT", "peer_address"]

logger = logging.getLogger("winerp.hub")

# How long a connection may take to finish closing (our close frame sent) before it is cut:
# a quiet peer gets CLOSING_GRACE; one still sending (e.g. the rest of a message too big to
# take) up to CLOSING_LIMIT, since cutting it while it sends resets the connection and loses
# the close frame and its reason.
CLOSING_GRACE = 2.0
CLOSING_LIMIT = 10.0

# Headers of the usual routed message, a binary frame of under 126 bytes, by size.
_SHORT_BINARY_HEADERS = [server_header(OP_BINARY, size) for size in range(126)]


def peer_address(peer: Any) -> str:
    """``host:port`` of an accepted peer (``[host]:port`` for IPv6), for the log."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


class Stage(enum.Enum):
    """Where a connection stands; it only ever moves forward."""

    #: The TLS handshake is in progress (``wss://`` only).
    TLS = "tls"
    #: Reading the HTTP upgrade request.
    HTTP = "http"
    #: The websocket is open: messages flow both ways.
    OPEN = "open"
    #: Our last bytes (a close frame, an HTTP answer) are queued: nothing more is queued, and
    #: what arrives is read and dropped.
    CLOSING = "closing"
    #: Our last bytes are out and our side is shut (half-close): reading and dropping until the
    #: peer closes its side too, since closing with unread input would reset the connection
    #: and the peer would lose the close frame and its reason.
    HALF_CLOSED = "half-closed"
    #: The socket is closed and the hub has forgotten the connection.
    CLOSED = "closed"


_OPEN = Stage.OPEN
# The stages in which nothing more is queued.
_ENDING = frozenset({Stage.CLOSING, Stage.HALF_CLOSED, Stage.CLOSED})
_HANDSHAKING = frozenset({Stage.TLS, Stage.HTTP})


class Connections:
    """Every connection of one hub, and what a connection needs of the hub's loop.

    The loop owns it: the poller, which connections have output waiting for the end of the
    loop's turn (`dirty`), and what to do when a connection ends (``on_release``: the hub
    takes the client out of the router).

    Args:
        outbox_limit: Bytes queued for one connection before it is dropped as too slow.
        would_block: The exceptions a non-blocking ``send`` raises when it cannot go on.
        on_release: Called once for each connection that ends, when it stops being read.
    """

    def __init__(
        self,
        *,
        outbox_limit: int,
        would_block: tuple[type[OSError], ...],
        on_release: Callable[[HubConnection], None],
    ) -> None:
        self.outbox_limit = outbox_limit
        self.would_block = would_block
        self.on_release = on_release
        #: Set by the hub when it starts.
        self.poller: Poller | None = None
        #: Every connection not yet closed.
        self.all: set[HubConnection] = set()
        #: The connections still in their TLS or HTTP handshake.
        self.handshakes: set[HubConnection] = set()
        #: The connection behind each descriptor the poller watches for one.
        self.by_fd: dict[int, HubConnection] = {}
        #: Connections with output queued in this turn of the loop; the loop flushes them.
        self.dirty: list[HubConnection] = []

    def __len__(self) -> int:
        return len(self.all)

    def add(self, connection: HubConnection) -> None:
        """Start watching a connection just accepted."""
        assert self.poller is not None
        self.all.add(connection)
        self.handshakes.add(connection)
        self.poller.register(connection.sock)
        self.by_fd[connection.sock.fileno()] = connection

    def watch_writes(self, connection: HubConnection, write: bool) -> None:
        """Ask the poller to wake the loop when ``connection`` can be written (or stop)."""
        if connection.watching_writes == write:
            return  # the usual case, decided without asking the poller
        assert self.poller is not None
        try:
            self.poller.watch_writes(connection.sock, write)
        except (KeyError, ValueError, OSError):
            return
        connection.watching_writes = write

    def forget(self, connection: HubConnection) -> None:
        """Stop watching ``connection`` (its socket is closed next). Never raises."""
        self.all.discard(connection)
        self.handshakes.discard(connection)
        try:
            fd = connection.sock.fileno()
            if self.by_fd.get(fd) is connection:
                del self.by_fd[fd]
            if self.poller is not None:
                self.poller.unregister(connection.sock)
        except Exception:  # noqa: BLE001 - the socket is closed next, which the poller forgets too
            pass

    def tear_out(self, connection: HubConnection) -> None:
        """The last resort, when `HubConnection.abort` itself failed: forget and close, no more."""
        connection.stage = Stage.CLOSED
        self.forget(connection)
        try:
            connection.sock.close()
        except OSError:
            pass

    def flush_all(self, on_error: Callable[[HubConnection], None]) -> None:
        """Write the output queued in this turn of the loop, connection by connection.

        An unexpected error (a bug) costs its connection only: ``on_error`` is called from
        the ``except`` block, so it can log the traceback.
        """
        while self.dirty:
            dirty, self.dirty = self.dirty, []
            for connection in dirty:
                connection.dirty = False
                if connection.stage is not Stage.CLOSED:
                    try:
                        connection.flush()
                    except Exception:  # noqa: BLE001 - a bug: on_error logs it; it costs this connection only
                        on_error(connection)

    def release(self, connection: HubConnection) -> None:
        """``connection`` takes no more input: tell the hub, once."""
        if not connection.released:
            connection.released = True
            self.on_release(connection)


class HubConnection:
    """One client connection at the hub: its socket, framing, output and session.

    Output is queued (`queue`, `queue_message`) while the loop handles what arrived, then
    leaves in one ``send`` (`flush`) at the end of the loop's turn. Only the hub's loop
    thread touches it.
    """

    __slots__ = (
        "address",
        "batch",
        "batch_bytes",
        "batch_limit",
        "closing_since",
        "connected_at",
        "connections",
        "dirty",
        "head",
        "last_received",
        "native",
        "number",
        "out",
        "out_bytes",
        "reader",
        "released",
        "session",
        "sock",
        "stage",
        "unsent",
        "watching_writes",
        "why",
    )

    def __init__(
        self, connections: Connections, sock: socket.socket, number: int, now: float, tls: bool, address: str = ""
    ) -> None:
        self.connections = connections
        self.sock = sock
        self.number = number
        #: The peer's address, ``host:port``, for the log.
        self.address = address
        #: Why the connection ended (the first reason known), for the log.
        self.why = ""
        self.stage = Stage.TLS if tls else Stage.HTTP
        self.native = True
        #: The HTTP request head read so far (stage HTTP).
        self.head = b""
        self.reader: FrameReader | None = None
        self.session: Session | None = None
        self.out: list[bytes] = []
        self.out_bytes = 0
        #: Non-zero once the client said it reads batches: the routed binary messages of a
        #: turn then wait in `batch` and leave framed together, up to this many bytes a frame.
        self.batch_limit = 0
        self.batch: list[bytes] = []
        self.batch_bytes = 0
        # Bytes a send took only in part. Kept apart from `out`: a TLS write that could not
        # finish must be retried with the very same bytes.
        self.unsent = b""
        self.dirty = False
        self.watching_writes = False
        self.released = False
        self.connected_at = self.last_received = now
        self.closing_since: float | None = None

    @property
    def name(self) -> str:
        """The client's name once it registered, else ``""``."""
        return self.session.name if self.session is not None else ""

    def note(self, why: str) -> None:
        """Record why the connection ends, unless an earlier reason is known."""
        if not self.why:
            self.why = why

    # output

    def queue_message(self, message: Message) -> None:
        """Queue one routed message, framed (header and body kept apart, joined at the write).

        To a client that reads batches, binary messages are framed at the flush, several
        to a frame (`_frame_batch`).
        """
        if isinstance(message, bytes):
            size = len(message)
            if self.batch_limit:
                if self.batch and self.batch_bytes + size > self.batch_limit:
                    self._frame_batch()
                if self._taking():
                    self.batch.append(message)
                    self.batch_bytes += size
                    self._queued(size)
                return
            header = _SHORT_BINARY_HEADERS[size] if size < 126 else server_header(OP_BINARY, size)
        else:
            message = message.encode()
            header = server_header(OP_TEXT, len(message))
        self.queue(header, message)

    def queue(self, data: bytes, body: bytes = b"") -> None:
        """Queue bytes (a frame's header and body may come apart); they leave in the next `flush`, joined.

        Dropped once the connection is ending.
        """
        if self.batch:
            self._frame_batch()  # what waits to be batched was queued first
        if self._taking():
            out = self.out
            out.append(data)
            if body:
                out.append(body)
            self._queued(len(data) + len(body))

    def _taking(self) -> bool:
        """Whether output is still queued (not once the connection is ending)."""
        stage = self.stage
        return stage is _OPEN or stage not in _ENDING

    def _queued(self, size: int) -> None:
        """``size`` more bytes wait: mind the outbox limit, and have them flushed this turn."""
        self.out_bytes += size
        if self.out_bytes + len(self.unsent) > self.connections.outbox_limit:
            self._overflowed()
        elif not self.dirty:
            self._schedule_flush()

    def _frame_batch(self) -> None:
        """Move the messages waiting in `batch` to the output: one frame, a batch if several."""
        bodies, size = self.batch, self.batch_bytes
        self.batch, self.batch_bytes = [], 0
        out = self.out
        if len(bodies) == 1:
            out.append(_SHORT_BINARY_HEADERS[size] if size < 126 else server_header(OP_BINARY, size))
        else:
            head = batch_header(len(bodies))
            out.append(server_header(OP_BINARY, size + len(head)))
            out.append(head)
        out.extend(bodies)

    def flush(self) -> None:
        """Write what is queued, as far as the socket takes it without blocking."""
        if self.batch:
            self._frame_batch()
        sock = self.sock
        while True:
            if not self.unsent:
                if not self.out:
                    break
                out = self.out
                self.unsent = out[0] if len(out) == 1 else b"".join(out)
                self.out = []
                self.out_bytes = 0
            try:
                sent = sock.send(self.unsent)
            except self.connections.would_block:
                sent = 0
            except OSError as exc:
                logger.debug("connection %s: write failed: %s", self.number, exc)
                self.note(f"connection lost: write failed: {exc}")
                self.abort()
                return
            if sent < len(self.unsent):
                self.unsent = self.unsent[sent:]
                self.connections.watch_writes(self, True)
                return
            self.unsent = b""
        if self.watching_writes:
            self.connections.watch_writes(self, False)
        if self.stage is Stage.CLOSING:
            self._shut_our_side()

    def _shut_our_side(self) -> None:
        # Our last bytes are out. Half-close and keep reading (and dropping) until the peer
        # closes too (see Stage.HALF_CLOSED).
        self.stage = Stage.HALF_CLOSED
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.abort()

    def _schedule_flush(self) -> None:
        if not self.dirty:
            self.dirty = True
            self.connections.dirty.append(self)

    # ending

    def close(self, code: int, reason: str) -> None:
        """End gracefully: queue a close frame after what is queued, then wait for the peer's end.

        A connection still in its handshake has no websocket to close: it is aborted.
        """
        if self.stage is not _OPEN:
            if self.stage in _HANDSHAKING:
                self.abort()
            return
        logger.info("closing connection %s (%s): %d %s", self.number, self.name, code, reason)
        self.note(f"closed by the hub: {code} {reason}")
        self.queue(server_frame(OP_CLOSE, close_payload(code, reason)))
        self.finish()

    def answer_close(self, payload: bytes) -> None:
        """The peer sent a close frame: answer with the same code, and close once the answer is out."""
        code, reason = parse_close(payload)
        self.note("it closed the connection" + (f" ({code} {reason})" if code is not None else ""))
        self.queue(server_frame(OP_CLOSE, payload[:2] if code is not None else b""))
        self.finish()

    def finish(self) -> None:
        """The bytes queued so far are the last ones: take no more input, close once they are out."""
        if self.stage in _ENDING:
            return
        self.connections.release(self)
        self.stage = Stage.CLOSING
        self.closing_since = time.monotonic()
        self.connections.handshakes.discard(self)
        self._schedule_flush()

    def abort(self, code: int | None = None, reason: str = "") -> None:
        """End at once: close the socket now. Idempotent.

        With a ``code``, a close frame is sent first if it can leave at once: never after a
        half-written frame, and never blocking.
        """
        if self.stage is Stage.CLOSED:
            return
        if code is not None:
            self.note(f"dropped by the hub: {code} {reason}")
            if self.stage is _OPEN and not self.unsent:
                try:
                    self.sock.send(server_frame(OP_CLOSE, close_payload(code, reason)))
                except (OSError, ValueError):
                    pass
        self.stage = Stage.CLOSED
        self.out = []
        self.out_bytes = 0
        self.batch = []
        self.unsent = b""
        self.connections.forget(self)
        try:
            self.sock.close()
        except OSError:
            pass
        self.connections.release(self)

    def _overflowed(self) -> None:
        limit = self.connections.outbox_limit
        logger.warning("client %r is not reading: backlog over %d bytes, disconnecting", self.name, limit)
        self.out = []
        self.out_bytes = 0
        self.batch = []
        self.abort(CloseCode.OVERLOADED, "too slow: outbound backlog full")

    def closing_overdue(self, now: float) -> bool:
        """Whether a connection that is closing has waited long enough for its peer's end."""
        if self.closing_since is None:
            return False
        closing_for = now - self.closing_since
        quiet = now - self.last_received > CLOSING_GRACE / 4
        return closing_for > CLOSING_LIMIT or (closing_for > CLOSING_GRACE and quiet)
