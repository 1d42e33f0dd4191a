"""The hub: one event loop thread around the sans-IO `Router`.

A single thread, ``winerp-hub``, waits on every socket at once (epoll where there is one)
and does all the work: it accepts, reads the HTTP upgrade and asks `handshake.admit`,
cuts the bytes of each connection into messages (`wsframe.FrameReader`), hands them to the
router, and writes what the router answers. Writes are gathered per connection while the
loop handles what arrived, then leave as one ``send`` each, so a burst costs few system
calls and a lone request is not delayed. A client that stops reading is cut off once its
backlog passes a bound, with a close reason; silent clients are dropped by a heartbeat
sweep on the same thread.

One thread serves every connection, so an idle connection costs a socket and a few
objects, never a thread, and the router needs no lock against itself.
"""

from __future__ import annotations

import enum
import logging
import signal
import socket
import threading
import time
import types
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from .. import errors
from ..defaults import DEFAULT_HOST, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PORT
from ..protocol.codec import Codec, Message, NativeCodec
from ..protocol.router import Output, Router, Session, SessionState
from ..wire import handshake
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
    server_frame,
    server_header,
)
from .metrics import Rates
from .poller import IN, OUT, Poller

if TYPE_CHECKING:
    import ssl

    from .dashboard import Dashboard

__all__ = ["Hub", "DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_MAX_MESSAGE_SIZE"]

# Named for what it logs, not for the module path: a stable name for users to configure.
logger = logging.getLogger("winerp.hub")


# Close codes (RFC 6455) the hub sends.

_READ_SIZE = 256 * 1024
_PING_FRAME = server_frame(OP_PING, b"")
# Headers of the usual routed message, a binary frame of under 126 bytes, by size.
_SHORT_BINARY_HEADERS = [server_header(OP_BINARY, size) for size in range(126)]
# How long a connection may take to finish closing (our close frame sent) before it is cut:
# a quiet peer gets _CLOSING_GRACE; one still sending (e.g. the rest of a message too big to
# take) up to _CLOSING_LIMIT, since cutting it while it sends resets the connection and
# loses the close frame and its reason.
_CLOSING_GRACE = 2.0
# Close codes that end a connection normally: not counted as errors (dashboard).
_NOT_ERRORS = frozenset({CloseCode.NORMAL, CloseCode.GOING_AWAY, CloseCode.SERVICE_RESTART})
_CLOSE_CODES = frozenset(int(code) for code in CloseCode)
_CLOSING_LIMIT = 10.0


def _address(peer: Any) -> str:
    """``host:port`` of an accepted peer (``[host]:port`` for IPv6), for the log."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer)


def _note(connection: HubConnection, why: str) -> None:
    """Record why ``connection`` ends, unless an earlier reason is known."""
    if not connection.why:
        connection.why = why


class _Stage(enum.Enum):
    TLS = "tls"  # TLS handshake in progress
    HTTP = "http"  # reading the HTTP upgrade request
    OPEN = "open"  # websocket open
    CLOSING = "closing"  # our last bytes are queued; the socket half-closes once they are out
    CLOSED = "closed"


class HubConnection:
    """One client connection at the hub: its socket, framing, output and session.

    Only the hub's loop thread touches it.
    """

    __slots__ = (
        "address",
        "closing_since",
        "connected_at",
        "dirty",
        "head",
        "hub",
        "last_received",
        "native",
        "number",
        "out",
        "out_bytes",
        "reader",
        "session",
        "sock",
        "stage",
        "unsent",
        "watching_writes",
        "why",
        "writing",
    )

    def __init__(self, hub: Hub, sock: socket.socket, number: int, now: float, tls: bool, address: str = "") -> None:
        self.hub = hub
        self.sock = sock
        self.number = number
        #: The peer's address, ``host:port``, for the log.
        self.address = address
        #: Why the connection ended (the first reason known), for the log.
        self.why = ""
        self.stage = _Stage.TLS if tls else _Stage.HTTP
        self.native = True
        self.head = b""
        self.reader: FrameReader | None = None
        self.session: Session | None = None
        self.out: list[bytes] = []
        self.out_bytes = 0
        # Bytes a send took only in part. Kept apart from `out`: a TLS write that could not
        # finish must be retried with the very same bytes.
        self.unsent = b""
        self.dirty = False
        self.watching_writes = False
        self.writing = False
        self.connected_at = self.last_received = now
        self.closing_since: float | None = None

    @property
    def name(self) -> str:
        return self.session.name if self.session is not None else ""

    def send_message(self, message: Message) -> None:
        """Frame and queue one routed message for this client (the router's transport hook)."""
        self.hub._queue_message(self, message)


class Hub:
    """The central hub that routes requests and informs between named clients.

    Args:
        host: Address to bind; the loopback address by default, so nothing outside this
            machine can connect unless asked for.
        port: Port to bind; 0 picks a free one (read it back from `port`).
        token: Shared secret every client must present; defaults to ``$WINERP_TOKEN``.
        ssl_context: Serve ``wss://`` with this server-side context.
        allowed_origins: ``Origin`` values let in; any other browser handshake gets 403.
        max_message_size: Largest message, in bytes, the hub accepts from a client.
        heartbeat: Seconds between client heartbeats; a client silent for five of them is
            dropped.
        max_pending: Requests one client may have in flight.
        outbox_limit: Bytes buffered for a client that does not read before it is dropped.
        handshake_timeout: Seconds a new connection has to finish its handshake and register.
        dashboard: Also answer plain HTTP ``GET``s on the hub's port: ``/`` a live web page,
            ``/status.json`` and ``/metrics`` (Prometheus), each behind the token if there is one.

    Use as a context manager, or call `start` and `stop`, or `serve_forever`. Thread-safe.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        allowed_origins: Collection[str] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        heartbeat: float = 1.0,
        max_pending: int = 10_000,
        outbox_limit: int | None = None,
        handshake_timeout: float = 10.0,
        dashboard: bool = False,
    ) -> None:
        import os

        self.host = host
        self._requested_port = port
        self._bound_port = port
        self.token = token if token is not None else (os.environ.get("WINERP_TOKEN") or None)
        self.ssl_context = ssl_context
        self.allowed_origins = frozenset(allowed_origins or ())
        self.max_message_size = max_message_size
        self.heartbeat = heartbeat
        self.outbox_limit = outbox_limit if outbox_limit is not None else max(32 * 1024 * 1024, 4 * max_message_size)
        self.handshake_timeout = handshake_timeout
        self._router = Router(heartbeat=heartbeat, max_message_size=max_message_size, max_pending=max_pending)
        # Guards the router against `clients` and `status` called from other threads.
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._poller: Poller | None = None
        # The connection behind each descriptor the poller watches (not the listener's or the waker's).
        self._by_fd: dict[int, HubConnection] = {}
        self._waker: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[HubConnection] = set()
        #: Connections still in their TLS or HTTP handshake.
        self._handshakes: set[HubConnection] = set()
        self._dirty: list[HubConnection] = []
        # `ssl` is imported only for a TLS hub: it loads OpenSSL, a few MB of memory.
        self._tls = ssl_context is not None
        self._would_block: tuple[type[OSError], ...] = (BlockingIOError,)
        if self._tls:
            import ssl

            self._would_block = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
        # One receive buffer for every read: a fresh 256 KiB bytes object per recv() would
        # cost an mmap, an mremap and a munmap each time.
        self._buffer = bytearray(_READ_SIZE)
        self._view = memoryview(self._buffer)
        self._stopping = False
        self._stop_timeout = 2.0
        self._stopped = threading.Event()
        self._started = False
        self._numbers = iter(range(1, 1 << 62))
        # dashboard hook: the rates ring, sampled on the sweep, and the HTTP answers.
        self._started_at = time.time()
        self._rates = Rates()
        self._router.status_extra = self._status_extra
        self._dashboard: Dashboard | None = None
        if dashboard:
            from .dashboard import Dashboard

            self._dashboard = Dashboard(
                self.status, token=self.token, allowed_origins=self.allowed_origins, tls=self._tls
            )

    # public API

    @property
    def port(self) -> int:
        """The bound port (the real one when created with ``port=0``)."""
        return self._bound_port

    @property
    def clients(self) -> list[str]:
        """Names of the clients connected and registered (not on hold) right now."""
        with self._lock:
            return self._router.ready_names()

    def status(self) -> dict[str, Any]:
        """The hub's counters and every client's (what ``winerp status`` prints)."""
        with self._lock:
            return self._router.status()

    # dashboard hooks

    def _status_extra(self) -> dict[str, Any]:
        """The hub's part of its status object: uptime and rates. Call with the lock held."""
        now = time.time()
        return {
            "hub": {
                "started": self._started_at,
                "uptime_s": round(now - self._started_at, 3),
                "dashboard": self._dashboard is not None,
            },
            "rates": self._rates.history(),
        }

    def _sample_rates(self) -> None:
        """Put the counters in the rates ring (from the sweep: about once a second, never per message)."""
        now = time.time()
        if self._rates.due(now):
            with self._lock:
                router = self._router
                sessions = router.sessions
                totals = router.traffic.summary(
                    sum(s.messages_out for s in sessions), sum(s.bytes_out for s in sessions)
                )
                self._rates.sample(now, totals)

    def _count_error(self, kind: str) -> None:
        with self._lock:
            self._router.traffic.error(kind)

    def start(self) -> None:
        """Bind and start serving on a background thread; return once connections are accepted.

        Raises:
            OSError: the address cannot be bound (e.g. the port is busy).
            RuntimeError: the hub was already started.
        """
        if self._started:
            raise RuntimeError("this hub was already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.host, self._requested_port))
            listener.listen(1024)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self._listener = listener
        self._bound_port = int(listener.getsockname()[1])
        self._waker = socket.socketpair()
        for end in self._waker:
            end.setblocking(False)
        self._poller = Poller()
        self._poller.register(listener)
        self._poller.register(self._waker[0])
        self._started = True
        self._thread = threading.Thread(target=self._run, name="winerp-hub", daemon=True)
        self._thread.start()
        logger.info("hub listening on %s:%d", self.host, self.port)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop gracefully: tell every client the hub is going away, then close everything.

        Requests in flight fail at their callers (`ConnectionLost`). Idempotent.
        """
        if not self._started or self._stopping:
            return
        self._stop_timeout = timeout
        self._stopping = True
        self._stopped.set()
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout + 5)
        logger.info("hub stopped")

    def serve_forever(self) -> None:
        """Start (unless started) and block until `stop` is called or SIGINT/SIGTERM arrives.

        Signal handlers are installed only while this runs, and only on the main thread.
        """
        if not self._started:
            self.start()
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():

            def _on_signal(signum: int, frame: types.FrameType | None) -> None:
                self._stopped.set()

            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, _on_signal)
        try:
            while not self._stopped.wait(0.2):
                pass
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self.stop()

    def __enter__(self) -> Hub:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # the loop

    def _wake(self) -> None:
        if self._waker is not None:
            try:
                self._waker[1].send(b"\0")
            except OSError:
                pass

    def _run(self) -> None:
        assert self._poller is not None and self._listener is not None
        poll = self._poller.poll
        by_fd = self._by_fd
        listener = self._listener.fileno()
        sweep_every = min(0.5, self.heartbeat / 2)
        next_sweep = time.monotonic() + sweep_every
        try:
            while not self._stopping:
                try:
                    ready = poll(max(0.0, next_sweep - time.monotonic()))
                    now = time.monotonic()
                    for fd, events in ready:
                        connection = by_fd.get(fd)
                        if connection is not None:
                            self._on_event(connection, events, now)
                        elif fd == listener:
                            self._accept(now)
                        else:
                            self._drain_waker()  # or a stale event of a connection gone meanwhile
                    if self._dirty:
                        self._flush_all()
                    if now >= next_sweep:
                        self._sweep(now)
                        self._sample_rates()  # dashboard hook
                        self._flush_all()
                        next_sweep = now + sweep_every
                except Exception:
                    # The last net: errors of one connection are caught where they happen and
                    # cost that connection alone. Whatever gets here must not stop the hub.
                    logger.exception("the hub loop hit an unexpected error; it serves on")
                    self._stopped.wait(0.05)  # never a hot loop of failures
            self._shut_down()
        finally:
            self._close_everything()

    def _on_event(self, connection: HubConnection, events: int, now: float) -> None:
        try:
            if events == IN:  # the usual case
                self._on_readable(connection, now)
                return
            if events & ~IN and connection.stage is not _Stage.CLOSED:
                self._on_writable(connection)
            if events & ~OUT and connection.stage is not _Stage.CLOSED:
                self._on_readable(connection, now)
        except Exception:  # noqa: BLE001 - a bug: logged by _fail; it costs this connection, not the hub
            self._fail(connection)

    def _fail(self, connection: HubConnection) -> None:
        """An unexpected error (a bug) while handling ``connection``: log it, close it with 1011.

        Call from the ``except`` block, so the log has the traceback. Never raises: if even
        the clean-up fails, the connection is torn out of the loop by force.
        """
        logger.exception("connection %s (%s) failed", connection.number, connection.name or connection.address)
        _note(connection, "internal error in the hub")
        try:
            self._try_final(connection, CloseCode.INTERNAL_ERROR, "internal error in the hub")
            self._discard(connection)
        except Exception:
            logger.exception("connection %s: clean-up failed; removing it by force", connection.number)
            self._tear_out(connection)

    def _tear_out(self, connection: HubConnection) -> None:
        connection.stage = _Stage.CLOSED
        self._connections.discard(connection)
        self._handshakes.discard(connection)
        fd = connection.sock.fileno()
        if self._by_fd.get(fd) is connection:
            del self._by_fd[fd]
        try:
            if self._poller is not None:
                self._poller.unregister(connection.sock)
        except Exception:  # noqa: BLE001 - the socket is closed next, which the poller forgets too
            pass
        try:
            connection.sock.close()
        except OSError:
            pass

    def _drain_waker(self) -> None:
        assert self._waker is not None
        try:
            while self._waker[0].recv(4096):
                pass
        except OSError:
            pass

    def _accept(self, now: float) -> None:
        assert self._listener is not None and self._poller is not None
        while True:
            try:
                sock, peer = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                # e.g. out of file descriptors: the next loop turn tries again.
                logger.warning("accept failed: %s", exc)
                return
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.ssl_context is not None:
                    sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ValueError) as exc:
                logger.debug("could not set up an accepted socket: %s", exc)
                sock.close()
                continue
            connection = HubConnection(
                self, sock, next(self._numbers), now, tls=self.ssl_context is not None, address=_address(peer)
            )
            self._connections.add(connection)
            self._handshakes.add(connection)
            try:
                self._poller.register(sock)
                self._by_fd[sock.fileno()] = connection
                if connection.stage is _Stage.TLS:
                    self._tls_handshake(connection)
            except Exception:  # noqa: BLE001 - a bug: logged by _fail; it costs this connection only
                self._fail(connection)

    # reading

    def _on_readable(self, connection: HubConnection, now: float) -> None:
        if connection.stage is _Stage.TLS:
            self._tls_handshake(connection)
            return
        sock = connection.sock
        while True:
            try:
                size = sock.recv_into(self._buffer)
            except self._would_block:
                return
            except OSError as exc:
                logger.debug("connection %s: read failed: %s", connection.number, exc)
                _note(connection, f"connection lost: {exc}")
                self._discard(connection)
                return
            if not size:
                _note(connection, "connection lost (closed without a close frame)")
                self._discard(connection)
                return
            data = self._view[:size].tobytes()
            connection.last_received = now
            if connection.stage is _Stage.OPEN:
                self._on_frames(connection, data)
            elif connection.stage is _Stage.HTTP:
                self._on_request_bytes(connection, data)
            # CLOSING: what still arrives is discarded until the peer closes its side.
            if connection.stage is _Stage.CLOSED or not (self._tls and sock.pending()):  # type: ignore[attr-defined]
                return

    def _tls_handshake(self, connection: HubConnection) -> None:
        import ssl

        sock = connection.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._watch(connection, write=False)
            return
        except ssl.SSLWantWriteError:
            self._watch(connection, write=True)
            return
        except (OSError, ValueError) as exc:
            logger.debug("TLS handshake failed: %s", exc)
            self._discard(connection)
            return
        connection.stage = _Stage.HTTP
        self._watch(connection, write=False)
        if sock.pending():
            self._on_readable(connection, time.monotonic())

    def _on_request_bytes(self, connection: HubConnection, data: bytes) -> None:
        head = connection.head = connection.head + data
        if b"\r\n\r\n" not in head:
            if len(head) > handshake.MAX_REQUEST_BYTES:
                self._refuse(connection, handshake.Refusal(400, "request head too large"))
            elif not handshake.could_be_http(head):
                # Refused at once, not at the handshake deadline: a TLS client that meets a
                # hub without TLS then fails right away instead of timing out.
                self._refuse(connection, handshake.Refusal(400, "not an HTTP request (TLS to a hub without TLS?)"))
            return
        end = head.index(b"\r\n\r\n") + 4
        if end > handshake.MAX_REQUEST_BYTES:
            # Checked here too: a head that arrives whole in one read never meets the check above.
            self._refuse(connection, handshake.Refusal(400, "request head too large"))
            return
        if end != len(head):
            # A websocket client waits for the answer before it sends frames; anything else
            # (a request body, pipelining) gets a clear refusal.
            self._refuse(connection, handshake.Refusal(400, "data sent before the handshake was answered"))
            return
        if self._dashboard is not None:  # dashboard hook: plain HTTP GETs, never an upgrade
            answer = self._dashboard.answer(head[:end])
            if answer is not None:
                self._queue(connection, answer)
                self._finish(connection)
                return
        verdict = handshake.admit(head[:end], token=self.token, allowed_origins=self.allowed_origins)
        if isinstance(verdict, handshake.Refusal):
            self._refuse(connection, verdict)
            return
        connection.head = b""
        connection.native = verdict.native
        codec: Codec
        if verdict.native:
            codec = NativeCodec()
        else:
            from ..protocol.legacy import LegacyCodec

            codec = LegacyCodec()
        connection.reader = FrameReader(masked=True, max_size=self.max_message_size)
        connection.stage = _Stage.OPEN
        self._handshakes.discard(connection)
        self._queue(connection, handshake.switching_protocols(verdict))
        with self._lock:
            connection.session = self._router.open(codec, connection, time.time())

    def _refuse(self, connection: HubConnection, refusal: handshake.Refusal) -> None:
        logger.info("refused a handshake: %d %s", refusal.status, refusal.reason)
        self._count_error("handshake_refused")  # dashboard hook
        self._queue(connection, refusal.response())
        self._finish(connection)

    def _on_frames(self, connection: HubConnection, data: bytes) -> None:
        assert connection.reader is not None and connection.session is not None
        reader = connection.reader
        try:
            messages = reader.feed(data)
        except FrameError as exc:
            self._terminate(connection, exc.code, exc.reason)
            return
        self._on_messages(connection, messages)
        # The messages that came before a bad frame are handled first (above), then the
        # connection fails with the bad frame's close code.
        failure = reader.failure
        if failure is not None:
            self._terminate(connection, failure.code, failure.reason)

    def _on_messages(self, connection: HubConnection, messages: list[tuple[int, bytes]]) -> None:
        assert connection.session is not None
        session = connection.session
        router = self._router
        registering = session.state is SessionState.NEW
        for opcode, payload in messages:
            if connection.stage is not _Stage.OPEN:
                return
            if opcode in (OP_BINARY, OP_TEXT):
                message: Message = payload
                if opcode == OP_TEXT:
                    try:
                        message = payload.decode()
                    except UnicodeDecodeError:
                        self._terminate(connection, CloseCode.INVALID_DATA, "text message is not valid UTF-8")
                        return
                try:
                    with self._lock:
                        out = router.receive(session, message)
                except errors.ProtocolError as exc:
                    self._terminate(connection, CloseCode.PROTOCOL_ERROR, str(exc))
                    return
                except Exception:
                    # A router bug must cost one connection, with a close frame, not the hub.
                    logger.exception("routing a message from connection %s failed", connection.number)
                    self._terminate(connection, CloseCode.INTERNAL_ERROR, "internal error in the hub")
                    return
                if registering and session.state is not SessionState.NEW:
                    registering = False
                    self._log_join(connection, session)
                for destination, routed in out:
                    self._queue_message(destination.transport, routed)
            elif opcode == OP_PING:
                self._queue(connection, server_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                code, reason = parse_close(payload)
                _note(connection, "it closed the connection" + (f" ({code} {reason})" if code is not None else ""))
                # Answer with the same code, then close once the answer is out.
                self._queue(connection, server_frame(OP_CLOSE, payload[:2] if code is not None else b""))
                self._finish(connection)
                return
            # OP_PONG: being read at all is what counts (last_received).

    def _log_join(self, connection: HubConnection, session: Session) -> None:
        held = " (on hold: another client has the name)" if session.state is SessionState.HELD else ""
        kind = "" if connection.native else " (winerp 1.x)"
        logger.info("client %r joined from %s%s%s", session.name, connection.address, kind, held)

    def _deliver(self, out: Output) -> None:
        for session, message in out:
            self._queue_message(session.transport, message)

    # writing

    def _queue_message(self, connection: HubConnection, message: Message) -> None:
        """Queue one routed message for ``connection``, framed (header and body kept apart)."""
        if connection.stage is _Stage.CLOSED or connection.writing:
            return
        if isinstance(message, bytes):
            size = len(message)
            header = _SHORT_BINARY_HEADERS[size] if size < 126 else server_header(OP_BINARY, size)
        else:
            message = message.encode()
            header = server_header(OP_TEXT, len(message))
        self._queue(connection, header, message)

    def _queue(self, connection: HubConnection, *parts: bytes) -> None:
        """Queue bytes for ``connection``; they leave in its next write, joined."""
        if connection.stage is _Stage.CLOSED or connection.writing:
            return
        out = connection.out
        for part in parts:
            out.append(part)
            connection.out_bytes += len(part)
        if connection.out_bytes + len(connection.unsent) > self.outbox_limit:
            self._overflowed(connection)
            return
        if not connection.dirty:
            connection.dirty = True
            self._dirty.append(connection)

    def _flush_all(self) -> None:
        while self._dirty:
            dirty, self._dirty = self._dirty, []
            for connection in dirty:
                connection.dirty = False
                if connection.stage is not _Stage.CLOSED:
                    try:
                        self._flush(connection)
                    except Exception:  # noqa: BLE001 - a bug: logged by _fail; it costs this connection only
                        self._fail(connection)

    def _flush(self, connection: HubConnection) -> None:
        sock = connection.sock
        while True:
            if not connection.unsent:
                if not connection.out:
                    break
                out = connection.out
                connection.unsent = out[0] if len(out) == 1 else b"".join(out)
                connection.out = []
                connection.out_bytes = 0
            try:
                sent = sock.send(connection.unsent)
            except self._would_block:
                sent = 0
            except OSError as exc:
                logger.debug("connection %s: write failed: %s", connection.number, exc)
                _note(connection, f"connection lost: write failed: {exc}")
                self._discard(connection)
                return
            if sent < len(connection.unsent):
                connection.unsent = connection.unsent[sent:]
                self._watch(connection, write=True)
                return
            connection.unsent = b""
        if connection.watching_writes:
            self._watch(connection, write=False)
        if connection.stage is _Stage.CLOSING and connection.writing:
            # Our last bytes are out. Half-close and keep reading (and discarding) until the
            # peer closes too: closing with unread input would reset the connection, and the
            # peer would lose the close frame and its reason.
            connection.writing = False
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._discard(connection)

    def _on_writable(self, connection: HubConnection) -> None:
        if connection.stage is _Stage.TLS:
            self._tls_handshake(connection)
        else:
            self._flush(connection)

    def _watch(self, connection: HubConnection, *, write: bool) -> None:
        if connection.watching_writes == write:
            return  # the usual case, decided without asking the poller
        assert self._poller is not None
        try:
            self._poller.watch_writes(connection.sock, write)
        except (KeyError, ValueError, OSError):
            return
        connection.watching_writes = write

    # ending connections

    def _terminate(self, connection: HubConnection, code: int, reason: str) -> None:
        """Send a close frame, then end the connection once it is out."""
        if connection.stage is not _Stage.OPEN:
            if connection.stage in (_Stage.TLS, _Stage.HTTP):
                self._discard(connection)
            return
        logger.info("closing connection %s (%s): %d %s", connection.number, connection.name, code, reason)
        if code not in _NOT_ERRORS:  # dashboard hook
            self._count_error(f"closed_{CloseCode(code).name.lower()}" if code in _CLOSE_CODES else f"closed_{code}")
        _note(connection, f"closed by the hub: {code} {reason}")
        self._queue(connection, server_frame(OP_CLOSE, close_payload(code, reason)))
        self._finish(connection)

    def _finish(self, connection: HubConnection) -> None:
        """Stop taking input from ``connection``; close it once what is queued is written."""
        if connection.stage is _Stage.CLOSED:
            return
        self._leave_router(connection)
        connection.stage = _Stage.CLOSING
        connection.closing_since = time.monotonic()
        connection.writing = True  # the bytes queued so far are the last ones
        self._handshakes.discard(connection)
        if not connection.dirty:
            connection.dirty = True
            self._dirty.append(connection)

    def _cut(self, connection: HubConnection, code: int, reason: str) -> None:
        """Drop a connection whose peer has gone silent, at once, with no close handshake.

        A silent peer (stopped, hung, or vanished with its TCP connection half-open) will
        never answer a close frame: waiting for it would only delay failing the requests
        that wait on it. The close frame is sent if it can go out at once.
        """
        logger.info("dropping connection %s (%s): %d %s", connection.number, connection.name, code, reason)
        self._count_error("heartbeat_timeout" if reason.startswith("heartbeat") else "dropped")  # dashboard hook
        _note(connection, f"dropped by the hub: {code} {reason}")
        self._try_final(connection, code, reason)
        self._discard(connection)

    def _try_final(self, connection: HubConnection, code: int, reason: str) -> None:
        # Never after a half-written frame, and never blocking.
        if connection.unsent or connection.stage is not _Stage.OPEN:
            return
        try:
            connection.sock.send(server_frame(OP_CLOSE, close_payload(code, reason)))
        except (OSError, ValueError):
            pass

    def _overflowed(self, connection: HubConnection) -> None:
        logger.warning(
            "client %r is not reading: backlog over %d bytes, disconnecting", connection.name, self.outbox_limit
        )
        _note(connection, f"dropped by the hub: {CloseCode.OVERLOADED} too slow: outbound backlog full")
        self._count_error("slow_consumer")  # dashboard hook
        connection.out = []
        connection.out_bytes = 0
        self._try_final(connection, CloseCode.OVERLOADED, "too slow: outbound backlog full")
        self._discard(connection)

    def _leave_router(self, connection: HubConnection) -> None:
        session = connection.session
        if session is None or session.state is SessionState.CLOSED:
            return
        if session.state is not SessionState.NEW:
            logger.info(
                "client %r (%s) left: %s", session.name, connection.address, connection.why or "connection closed"
            )
        with self._lock:
            out = self._router.close(session)
        self._deliver(out)

    def _discard(self, connection: HubConnection) -> None:
        """Forget ``connection`` and close its socket at once. Idempotent."""
        if connection.stage is _Stage.CLOSED:
            return
        connection.stage = _Stage.CLOSED
        connection.out = []
        connection.unsent = b""
        self._connections.discard(connection)
        self._handshakes.discard(connection)
        if self._poller is not None:
            if self._by_fd.get(connection.sock.fileno()) is connection:
                del self._by_fd[connection.sock.fileno()]
            self._poller.unregister(connection.sock)
        try:
            connection.sock.close()
        except OSError:
            pass
        self._leave_router(connection)

    def _sweep(self, now: float) -> None:
        """Drop connections that went silent, never registered, or never finished closing."""
        dead_after = 5 * self.heartbeat
        for connection in list(self._connections):
            try:
                self._sweep_one(connection, now, dead_after)
            except Exception:  # noqa: BLE001 - a bug: logged by _fail; it costs this connection only
                self._fail(connection)

    def _sweep_one(self, connection: HubConnection, now: float, dead_after: float) -> None:
        """Drop ``connection`` if it went silent, never registered, or never finished closing."""
        silence = now - connection.last_received
        if connection.stage in (_Stage.TLS, _Stage.HTTP):
            if now - connection.connected_at > self.handshake_timeout:
                logger.info("closing a connection that did not finish its handshake in time")
                self._discard(connection)
        elif connection.stage is _Stage.CLOSING:
            assert connection.closing_since is not None
            closing_for = now - connection.closing_since
            if closing_for > _CLOSING_LIMIT or (
                closing_for > _CLOSING_GRACE and now - connection.last_received > _CLOSING_GRACE / 4
            ):
                self._discard(connection)
        elif connection.session is None or connection.session.state is SessionState.NEW:
            if now - connection.connected_at > self.handshake_timeout:
                self._terminate(connection, CloseCode.POLICY_VIOLATION, "no registration in time")
        elif silence > dead_after:
            self._cut(connection, CloseCode.POLICY_VIOLATION, f"heartbeat timeout: silent for {silence:.1f} s")
        elif not connection.native and silence > self.heartbeat:
            # winerp 1.x clients send nothing while idle, but their websocket library
            # answers a websocket ping, and the pong counts as traffic.
            self._queue(connection, _PING_FRAME)

    def _shut_down(self) -> None:
        """Tell every client the hub is going away, and give them `stop`'s timeout to close."""
        assert self._poller is not None
        if self._listener is not None:
            self._poller.unregister(self._listener)
            self._listener.close()
            self._listener = None
        for connection in list(self._connections):
            if connection.stage is _Stage.OPEN:
                # winerp 1.x clients take a 1001 close for a normal one and never notice; 1012
                # ("service restart") makes them see the drop.
                code = CloseCode.GOING_AWAY if connection.native else CloseCode.SERVICE_RESTART
                self._terminate(connection, code, "hub shutting down")
            else:
                self._discard(connection)
        self._flush_all()
        deadline = time.monotonic() + self._stop_timeout
        while self._connections:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for fd, events in self._poller.poll(min(remaining, 0.1)):
                ready = self._by_fd.get(fd)
                if ready is None:
                    self._drain_waker()
                    continue
                self._on_event(ready, events, time.monotonic())
            self._flush_all()

    def _close_everything(self) -> None:
        for connection in list(self._connections):
            self._discard(connection)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._poller is not None:
            self._poller.close()
        if self._waker is not None:
            for end in self._waker:
                end.close()
