"""The hub: sockets and threads around the sans-IO `Router`.

One accept thread hands each new socket to a short-lived handshake thread, which reads the
HTTP request, lets `handshake.admit` judge it, and then starts a simple-websocket server
connection on it. Each connection's simple-websocket reader thread also routes: the router
runs under one lock, and the messages it produces go to each destination's `Outbox`, which
writes without ever blocking the router (a client that stops reading is cut off once its
backlog passes a bound, with a close reason). A heartbeat thread drops silent connections.
"""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import struct
import threading
import time
import types
from collections import deque
from collections.abc import Collection
from typing import Any, Callable

import simple_websocket
from wsproto import ConnectionType
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, TextMessage

from . import errors, handshake
from .frames import SUBPROTOCOL
from .protocol import Codec, Message, NativeCodec, Output, Router, Session, SessionState

__all__ = ["Hub", "DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_MAX_MESSAGE_SIZE"]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 13254
DEFAULT_MAX_MESSAGE_SIZE = 8 * 1024 * 1024

# Close codes (RFC 6455) the hub sends.
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_OVERLOADED = 1013

_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_PING_FRAME = b"\x89\x00"  # an empty websocket ping, server to client


def _binary_frame(payload: bytes) -> bytes:
    """Frame ``payload`` as one unmasked binary websocket message (server to client)."""
    size = len(payload)
    if size < 126:
        return bytes((0x82, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x82, 126, size) + payload
    return struct.pack("!BBQ", 0x82, 127, size) + payload


def _close_frame(code: int, reason: str) -> bytes:
    body = struct.pack("!H", code) + reason.encode()[:120].decode("utf-8", "ignore").encode()
    return bytes((0x88, len(body))) + body


class Outbox:
    """Ordered, non-blocking writes to one socket, with a bounded backlog.

    A write first tries the socket directly without blocking; whatever does not fit waits
    in a backlog that a writer thread drains. Past ``limit`` bytes of backlog the receiver
    is not keeping up, and ``on_overflow`` is called (once). Thread-safe.
    """

    def __init__(self, sock: socket.socket, limit: int, name: str, on_overflow: Callable[[], None]) -> None:
        self._sock = sock
        self._limit = limit
        self._name = name
        self._on_overflow = on_overflow
        self._direct = _MSG_DONTWAIT != 0 and not isinstance(sock, ssl.SSLSocket)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._backlog: deque[bytes] = deque()
        self._backlog_bytes = 0
        self._writing = False
        self._closed = False
        self._shut_after_flush = False
        self._writer: threading.Thread | None = None

    def write(self, data: bytes) -> None:
        """Queue ``data`` for the socket, in order. Never blocks on the network."""
        overflow = False
        with self._lock:
            if self._closed or self._shut_after_flush:
                return
            if self._direct and not self._backlog and not self._writing:
                try:
                    sent = self._sock.send(data, _MSG_DONTWAIT)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    return  # the reader sees the broken connection and ends it
                if sent == len(data):
                    return
                data = data[sent:]
            self._backlog.append(data)
            self._backlog_bytes += len(data)
            if self._backlog_bytes > self._limit:
                overflow = True
                self._closed = True
                self._backlog.clear()
            else:
                self._start_writer()
                self._wake.notify()
        if overflow:
            self._on_overflow()

    def finish(self, final: bytes) -> None:
        """Queue ``final`` (a close frame), then half-close the socket once it is written."""
        with self._lock:
            if self._closed or self._shut_after_flush:
                return
            self._backlog.append(final)
            self._shut_after_flush = True
            self._start_writer()
            self._wake.notify()

    def try_final(self, final: bytes) -> None:
        """Write ``final`` (a close frame) only if it can go out now, after nothing half-written.

        For a connection about to be cut: never blocks, and never interleaves with a write
        in progress; if the socket cannot take it at once, it is not sent.
        """
        with self._lock:
            if not self._direct or self._closed or self._backlog or self._writing:
                return
            try:
                self._sock.send(final, _MSG_DONTWAIT)
            except OSError:
                pass

    def close(self) -> None:
        """Stop writing; a blocked writer is released by the socket's shutdown."""
        with self._lock:
            self._closed = True
            self._backlog.clear()
            self._wake.notify()
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join(timeout=5)

    def _start_writer(self) -> None:
        # Call with self._lock held.
        if self._writer is None:
            self._writer = threading.Thread(target=self._drain, name=f"winerp-hub-writer-{self._name}", daemon=True)
            self._writer.start()

    def _drain(self) -> None:
        while True:
            with self._lock:
                self._writing = False
                while not self._backlog and not self._closed:
                    if self._shut_after_flush:
                        self._half_close()
                        return
                    self._wake.wait()
                if self._closed:
                    return
                chunk = b"".join(self._backlog)
                self._backlog.clear()
                self._backlog_bytes = 0
                self._writing = True
            try:
                self._sock.sendall(chunk)
            except OSError:
                with self._lock:
                    self._closed = True
                    self._writing = False
                return

    def _half_close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _Wire:
    """The socket as simple-websocket sees it.

    Reads go to the socket and mark the connection alive; writes (simple-websocket's own
    handshake answer, pongs and close replies) go through the connection's outbox, so they
    never interleave with routed messages written by other threads.
    """

    def __init__(self, sock: socket.socket, connection: HubConnection) -> None:
        self._sock = sock
        self._connection = connection

    def recv(self, size: int) -> bytes:
        data = self._sock.recv(size)
        self._connection.last_received = time.monotonic()
        return data

    def send(self, data: bytes) -> int:
        self._connection.outbox.write(bytes(data))
        return len(data)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        connection = self._connection
        if connection.ws.state is ConnectionState.LOCAL_CLOSING:
            # wsproto or simple-websocket just sent a close of its own (message too big,
            # broken framing) while the peer may still be sending.
            connection.linger()
        connection.abort()
        self._sock.close()


class _Arrivals:
    """Stands in for simple-websocket's ``Event``: every ``set()`` routes what arrived.

    simple-websocket signals each complete message by appending it to ``input_buffer`` and
    setting its event. Routing right there, on its reader thread, saves a thread hand-off
    per message compared to a second thread blocked in ``receive()``.
    """

    def __init__(self, connection: HubConnection) -> None:
        self._connection = connection

    def set(self) -> None:
        connection = self._connection
        buffer = connection.input_buffer
        while buffer:
            connection.hub._route(connection, buffer.pop(0))

    def clear(self) -> None:
        pass

    def is_set(self) -> bool:
        return False

    def wait(self, timeout: float | None = None) -> bool:
        return False


class HubConnection(simple_websocket.ws.Base):  # type: ignore[misc]
    """One client connection at the hub: a simple-websocket server connection that routes."""

    def __init__(
        self, hub: Hub, sock: socket.socket, request_head: bytes, admission: handshake.Admission, number: int
    ) -> None:
        self.hub = hub
        self.number = number
        self.request_head = request_head
        self.native = admission.native
        self.connected_at = self.last_received = time.monotonic()
        self.closing_since: float | None = None
        self.raw_socket = sock
        # No extension is ever negotiated (see `handshake.without_extensions`), so native
        # connections get frames built here: a few struct calls instead of wsproto's path.
        self._plain_frames = admission.native
        self.outbox = Outbox(sock, hub.outbox_limit, str(number), self._overflowed)
        codec: Codec
        if admission.native:
            codec = NativeCodec()
        else:
            from .legacy import LegacyCodec

            codec = LegacyCodec()
        self.session: Session = hub._open_session(codec, self)
        connection = self

        class _ReaderThread(threading.Thread):
            def __init__(self, target: Callable[[], None]) -> None:
                super().__init__(target=target, name=f"winerp-hub-conn-{number}", daemon=True)

            def run(self) -> None:
                try:
                    super().run()
                except Exception:  # pragma: no cover - simple-websocket ended on an error we did not expect
                    logger.exception("connection %s failed", number)
                finally:
                    hub._closed(connection)

        try:
            super().__init__(
                _Wire(sock, self),
                connection_type=ConnectionType.SERVER,
                receive_bytes=hub.receive_bytes,
                max_message_size=hub.max_message_size,
                thread_class=_ReaderThread,
                event_class=lambda: _Arrivals(connection),
            )
        except Exception:
            hub._closed(self)
            raise

    # simple-websocket hooks

    def handshake(self) -> None:
        self.ws.receive_data(handshake.without_extensions(self.request_head))
        self.connected = self._handle_events()

    def choose_subprotocol(self, request: Any) -> str | None:
        return SUBPROTOCOL if self.native else None

    # sending

    def send_message(self, message: Message) -> None:
        """Frame and queue one message for this client. Thread-safe; never blocks."""
        if self._plain_frames and isinstance(message, bytes):
            self.outbox.write(_binary_frame(message))
            return
        with self.hub._frame_lock:
            # wsproto's framing state (compression, fragmentation) is not thread-safe.
            if isinstance(message, bytes):
                data = self.ws.send(BytesMessage(data=message))
            else:
                data = self.ws.send(TextMessage(data=message))
        self.outbox.write(data)

    def terminate(self, code: int, reason: str) -> None:
        """Send a close frame, then end the connection; never blocks."""
        if self.closing_since is None:
            self.closing_since = time.monotonic()
            logger.info("closing connection %s (%s): %d %s", self.number, self.session.name, code, reason)
            self.outbox.finish(_close_frame(code, reason))

    def linger(self, seconds: float = 1.0) -> None:
        """Let the peer read the close frame just sent before the socket goes.

        Closing a socket with unread input resets the connection, and the peer then loses
        the close frame (and its reason) with it: half-close instead, and discard what still
        arrives for up to ``seconds``. Call on the reader thread.
        """
        self.outbox.finish(b"")
        deadline = time.monotonic() + seconds
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.raw_socket.settimeout(remaining)
                if not self.raw_socket.recv(65536):
                    break
        except OSError:
            pass

    def cut(self, code: int, reason: str) -> None:
        """Drop a connection whose peer has gone silent, at once, with no close handshake.

        A silent peer (stopped, hung, or vanished with its TCP connection half-open) will
        never answer a close frame: waiting for it would only delay failing the requests
        that wait on it. The close frame is sent if it can go out at once.
        """
        if self.closing_since is None:
            self.closing_since = time.monotonic()
        logger.info("dropping connection %s (%s): %d %s", self.number, self.session.name, code, reason)
        self.outbox.try_final(_close_frame(code, reason))
        self.abort()

    def abort(self) -> None:
        """Cut the connection at once; the reader thread wakes and cleans up."""
        try:
            self.raw_socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.outbox.close()

    def _overflowed(self) -> None:
        logger.warning(
            "client %r is not reading: backlog over %d bytes, disconnecting", self.session.name, self.hub.outbox_limit
        )
        try:
            self.raw_socket.send(_close_frame(CLOSE_OVERLOADED, "too slow: outbound backlog full"), _MSG_DONTWAIT)
        except OSError:
            pass
        self.abort()


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
        self.receive_bytes = 64 * 1024
        self._router = Router(heartbeat=heartbeat, max_message_size=max_message_size, max_pending=max_pending)
        self._lock = threading.Lock()
        self._frame_lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._connections: set[HubConnection] = set()
        self._threads: list[threading.Thread] = []
        self._handshakes: set[threading.Thread] = set()
        # Sockets still in their handshake -> when they must be done; the watch loop shuts
        # down the late ones, as a per-read timeout alone lets a client drip bytes forever.
        self._opening: dict[socket.socket, float] = {}
        self._stopped = threading.Event()
        self._started = False
        self._numbers = iter(range(1, 1 << 62))

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

    def start(self) -> None:
        """Bind and start serving on background threads; return once connections are accepted.

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
        self._listener = listener
        self._bound_port = int(listener.getsockname()[1])
        self._started = True
        for target, name in ((self._accept_loop, "winerp-hub-accept"), (self._watch_loop, "winerp-hub-heartbeat")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("hub listening on %s:%d", self.host, self.port)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop gracefully: tell every client the hub is going away, then close everything.

        Requests in flight fail at their callers (`ConnectionLost`). Idempotent.
        """
        if not self._started or self._stopped.is_set():
            return
        self._stopped.set()
        listener = self._listener
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            # winerp 1.x clients take a 1001 close for a normal one and never notice; 1012
            # ("service restart") makes them see the drop.
            connection.terminate(CLOSE_GOING_AWAY if connection.native else 1012, "hub shutting down")
        self._cut_handshakes(float("inf"))
        deadline = time.monotonic() + timeout
        for connection in connections:
            connection.thread.join(max(0.0, deadline - time.monotonic()))
        for connection in connections:
            connection.abort()
            connection.thread.join(1.0)
        for thread in self._threads + list(self._handshakes):
            thread.join(1.0)
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
            self._stopped.clear()
            self.stop()

    def __enter__(self) -> Hub:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # connections

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                sock, address = self._listener.accept()
            except OSError:
                if self._stopped.is_set():
                    return
                time.sleep(0.05)  # e.g. out of file descriptors: do not spin
                continue
            thread = threading.Thread(
                target=self._handshake, args=(sock,), name=f"winerp-hub-handshake-{address[1]}", daemon=True
            )
            self._handshakes.add(thread)
            thread.start()

    def _handshake(self, sock: socket.socket) -> None:
        raw = sock
        with self._lock:
            self._opening[raw] = time.monotonic() + self.handshake_timeout
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(self.handshake_timeout)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_side=True)
            head = self._read_request_head(sock)
            if head is None:
                sock.close()
                return
            verdict = handshake.admit(head, token=self.token, allowed_origins=self.allowed_origins)
            if isinstance(verdict, handshake.Refusal):
                logger.info("refused a handshake: %d %s", verdict.status, verdict.reason)
                sock.sendall(verdict.response())
                sock.close()
                return
            with self._lock:
                late = self._opening.pop(raw, None) is None
            if late or self._stopped.is_set():
                sock.close()
                return
            sock.settimeout(None)
            connection = HubConnection(self, sock, head, verdict, next(self._numbers))
            if not connection.connected:
                connection.abort()
        except (OSError, ValueError) as exc:
            logger.debug("handshake failed: %s", exc)
            try:
                sock.close()
            except OSError:
                pass
        except Exception:  # pragma: no cover - never let one connection take the hub down
            logger.exception("unexpected error during a handshake")
            sock.close()
        finally:
            with self._lock:
                self._opening.pop(raw, None)
            self._handshakes.discard(threading.current_thread())

    def _cut_handshakes(self, now: float) -> None:
        """Shut down the sockets whose handshake is past its deadline (all: ``now=inf``)."""
        with self._lock:
            late = [sock for sock, deadline in self._opening.items() if deadline < now]
            for sock in late:
                del self._opening[sock]
        for sock in late:
            logger.info("closing a connection that did not finish its handshake in time")
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @staticmethod
    def _read_request_head(sock: socket.socket) -> bytes | None:
        head = b""
        while b"\r\n\r\n" not in head:
            if len(head) > handshake.MAX_REQUEST_BYTES:
                sock.sendall(handshake.Refusal(400, "request head too large").response())
                return None
            chunk = sock.recv(4096)
            if not chunk:
                return None
            head += chunk
            if not handshake.could_be_http(head):
                # Refused at once, not at the handshake deadline: a TLS client that meets a
                # hub without TLS then fails right away instead of timing out.
                sock.sendall(handshake.Refusal(400, "not an HTTP request (TLS to a hub without TLS?)").response())
                return None
        end = head.index(b"\r\n\r\n") + 4
        if end != len(head):
            # A websocket client waits for the answer before it sends frames; anything else
            # (a request body, pipelining) gets a clear refusal.
            sock.sendall(handshake.Refusal(400, "data sent before the handshake was answered").response())
            return None
        return head

    def _open_session(self, codec: Codec, connection: HubConnection) -> Session:
        with self._lock:
            self._connections.add(connection)
            return self._router.open(codec, connection, time.time())

    def _route(self, connection: HubConnection, message: Message) -> None:
        try:
            with self._lock:
                out = self._router.receive(connection.session, message)
        except errors.ProtocolError as exc:
            connection.terminate(CLOSE_PROTOCOL_ERROR, str(exc))
            return
        except Exception:
            # A router bug must cost one connection, with a close frame, not its reader thread.
            logger.exception("routing a message from connection %s failed", connection.number)
            connection.terminate(CLOSE_INTERNAL_ERROR, "internal error in the hub")
            return
        self._deliver(out)

    def _closed(self, connection: HubConnection) -> None:
        connection.abort()
        with self._lock:
            self._connections.discard(connection)
            out = self._router.close(connection.session)
        self._deliver(out)
        try:
            connection.raw_socket.close()
        except OSError:
            pass

    @staticmethod
    def _deliver(out: Output) -> None:
        for session, message in out:
            session.transport.send_message(message)

    def _watch_loop(self) -> None:
        """Drop connections that went silent, never registered, or never finished closing."""
        dead_after = 5 * self.heartbeat
        while not self._stopped.wait(min(0.5, self.heartbeat / 2)):
            now = time.monotonic()
            self._cut_handshakes(now)
            with self._lock:
                connections = list(self._connections)
            for connection in connections:
                silence = now - connection.last_received
                if connection.closing_since is not None:
                    if now - connection.closing_since > 2.0:
                        connection.abort()
                elif (
                    connection.session.state is SessionState.NEW
                    and now - connection.connected_at > self.handshake_timeout
                ):
                    connection.terminate(CLOSE_POLICY_VIOLATION, "no registration in time")
                elif silence > dead_after:
                    connection.cut(CLOSE_POLICY_VIOLATION, f"heartbeat timeout: silent for {silence:.1f} s")
                elif not connection.native and silence > self.heartbeat:
                    # winerp 1.x clients send nothing while idle, but their websocket library
                    # answers a websocket ping, and the pong counts as traffic.
                    connection.outbox.write(_PING_FRAME)
