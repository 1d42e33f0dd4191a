"""The hub: one event loop thread around the sans-IO `Router`.

A single thread, ``winerp-hub``, waits on every socket at once (epoll where there is one)
and does all the work: it accepts, reads the HTTP upgrade and asks `handshake.admit`,
cuts the bytes of each connection into messages (`websocket.FrameReader`), hands them to the
router, and queues what the router answers on each destination `HubConnection`
(`winerp.hub.connection`, which also owns how a connection ends). Writes are gathered per
connection while the loop handles what arrived, then leave as one ``send`` each, so a burst
costs few system calls and a lone request is not delayed. Silent clients are dropped by a
heartbeat sweep on the same thread. See docs/hub-internals.md.

One thread serves every connection, so an idle connection costs a socket and a few
objects, never a thread, and the router needs no lock against itself.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import types
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from .. import errors
from ..defaults import DEFAULT_HOST, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PORT
from ..protocol.codec import Codec, Message, NativeCodec
from ..protocol.frames import BATCH_BYTES
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
    server_frame,
)
from .connection import Connections, HubConnection, Stage, peer_address
from .metrics import Rates, end_error
from .poller import IN, OUT, Poller

if TYPE_CHECKING:
    import ssl

    from ..cluster.link import ClusterLink
    from .dashboard import Dashboard

__all__ = ["Hub", "DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_MAX_MESSAGE_SIZE"]

# Named for what it logs, not for the module path: a stable name for users to configure.
logger = logging.getLogger("winerp.hub")

_READ_SIZE = 256 * 1024
_PING_FRAME = server_frame(OP_PING, b"")


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
        cluster: NATS URL(s), comma-separated, of a cluster of hubs to join (defaults to
            ``$WINERP_CLUSTER``): the clients of every hub of the cluster then share one
            namespace. Needs ``pip install 'winerp[cluster]'``; see docs/cluster.md.
        cluster_name: The cluster to join on that NATS server.
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
        cluster: str | None = None,
        cluster_name: str = "winerp",
        dashboard: bool = False,
    ) -> None:
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
        # Guards the router against `clients` and `status` called from other threads.
        self._lock = threading.Lock()
        router_options: dict[str, Any] = {
            "heartbeat": heartbeat,
            "max_message_size": max_message_size,
            "max_pending": max_pending,
        }
        cluster = cluster if cluster is not None else (os.environ.get("WINERP_CLUSTER") or None)
        self._cluster: ClusterLink | None = None
        if cluster:
            # Only a clustered hub loads the NATS side.
            from ..cluster.link import ClusterLink

            self._cluster = ClusterLink(
                [url.strip() for url in cluster.split(",") if url.strip()],
                cluster_name,
                lock=self._lock,
                deliver=self._deliver,
                evict=self._evict,
                wake=self._wake,
                **router_options,
            )
            self._router: Router = self._cluster.router
        else:
            self._router = Router(**router_options)
        self._listener: socket.socket | None = None
        self._poller: Poller | None = None
        self._waker: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._tls = ssl_context is not None
        would_block: tuple[type[OSError], ...] = (BlockingIOError,)
        # Decrypted bytes a TLS socket holds beyond what the poller sees, read in the same turn.
        self._tls_pending: Callable[[socket.socket], bool] | None = None
        if self._tls:
            from . import tls  # only here: it loads OpenSSL, a few MB of memory

            would_block = tls.WOULD_BLOCK
            self._tls_pending = tls.has_pending
        self._connections = Connections(
            outbox_limit=self.outbox_limit, would_block=would_block, on_release=self._leave_router
        )
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
                self._rates.sample(now, self._router.counters.totals())

    def _count_error(self, kind: str) -> None:
        with self._lock:
            self._router.counters.error(kind)

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
        self._connections.poller = self._poller
        self._poller.register(listener)
        self._poller.register(self._waker[0])
        if self._cluster is not None:
            try:
                self._cluster.start(f"{self.host}:{self._bound_port}", poller=self._poller)
            except BaseException:
                self._poller.close()
                for end in self._waker:
                    end.close()
                listener.close()
                raise
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
        if self._cluster is not None:
            self._cluster.stop()
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
        connections = self._connections
        by_fd = connections.by_fd
        listener = self._listener.fileno()
        cluster = self._cluster
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
                            if self._cluster is not None:
                                self._cluster.bridge.run_inbox()
                    if cluster is not None:
                        cluster.flush()  # what this turn sends other hubs, in one write
                    if connections.dirty:
                        connections.flush_all(self._fail)
                    if now >= next_sweep:
                        self._sweep(now)
                        self._sample_rates()  # dashboard hook
                        connections.flush_all(self._fail)
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
            if events & ~IN and connection.stage is not Stage.CLOSED:
                if connection.stage is Stage.TLS:
                    self._tls_handshake(connection)
                else:
                    connection.flush()
            if events & ~OUT and connection.stage is not Stage.CLOSED:
                self._on_readable(connection, now)
        except Exception:  # noqa: BLE001 - a bug: logged by _fail; it costs this connection, not the hub
            self._fail(connection)

    def _fail(self, connection: HubConnection) -> None:
        """An unexpected error (a bug) while handling ``connection``: log it, close it with 1011.

        Call from the ``except`` block, so the log has the traceback. Never raises: if even
        the clean-up fails, the connection is torn out of the loop by force.
        """
        logger.exception("connection %s (%s) failed", connection.number, connection.name or connection.address)
        connection.note("internal error in the hub")
        try:
            connection.abort(CloseCode.INTERNAL_ERROR, "internal error in the hub")
        except Exception:
            logger.exception("connection %s: clean-up failed; removing it by force", connection.number)
            self._connections.tear_out(connection)

    def _drain_waker(self) -> None:
        assert self._waker is not None
        try:
            while self._waker[0].recv(4096):
                pass
        except OSError:
            pass

    def _accept(self, now: float) -> None:
        assert self._listener is not None
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
            number = next(self._numbers)
            connection = HubConnection(self._connections, sock, number, now, tls=self._tls, address=peer_address(peer))
            try:
                self._connections.add(connection)
                if connection.stage is Stage.TLS:
                    self._tls_handshake(connection)
            except Exception:  # noqa: BLE001 - a bug: logged by _fail; it costs this connection only
                self._fail(connection)

    # reading

    def _on_readable(self, connection: HubConnection, now: float) -> None:
        if connection.stage is Stage.TLS:
            self._tls_handshake(connection)
            return
        sock = connection.sock
        pending = self._tls_pending
        while True:
            try:
                size = sock.recv_into(self._buffer)
            except self._connections.would_block:
                return
            except OSError as exc:
                logger.debug("connection %s: read failed: %s", connection.number, exc)
                connection.note(f"connection lost: {exc}")
                connection.abort()
                return
            if not size:
                connection.note("connection lost (closed without a close frame)")
                connection.abort()
                return
            data = self._view[:size].tobytes()
            connection.last_received = now
            if connection.stage is Stage.OPEN:
                self._on_frames(connection, data)
            elif connection.stage is Stage.HTTP:
                self._on_request_bytes(connection, data)
            # CLOSING, HALF_CLOSED: what still arrives is dropped until the peer closes its side.
            if connection.stage is Stage.CLOSED or not (pending is not None and pending(sock)):
                return

    def _tls_handshake(self, connection: HubConnection) -> None:
        from . import tls  # loaded already: the hub has TLS

        step = tls.handshake_step(connection.sock)
        if step is tls.Step.FAILED:
            connection.abort()
            return
        self._connections.watch_writes(connection, step is tls.Step.WANT_WRITE)
        if step is tls.Step.DONE:
            connection.stage = Stage.HTTP
            if tls.has_pending(connection.sock):
                self._on_readable(connection, time.monotonic())

    # the HTTP stage: every request the hub answers passes here

    def _on_request_bytes(self, connection: HubConnection, data: bytes) -> None:
        """Gather the request head; once it is whole, answer it (`_on_request`)."""
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
        connection.head = b""
        self._on_request(connection, head)

    def _on_request(self, connection: HubConnection, head: bytes) -> None:
        """Answer one whole HTTP request head: open a websocket, or refuse with plain HTTP.

        The one place that decides what a request gets; plain ``GET`` pages would be
        answered here, before the upgrade check refuses them.
        """
        if self._dashboard is not None:  # dashboard hook: plain HTTP GETs, never an upgrade
            answer = self._dashboard.answer(head)
            if answer is not None:
                connection.queue(answer)
                connection.finish()
                return
        verdict = handshake.admit(head, token=self.token, allowed_origins=self.allowed_origins)
        if isinstance(verdict, handshake.Refusal):
            self._refuse(connection, verdict)
        else:
            self._open_websocket(connection, verdict)

    def _refuse(self, connection: HubConnection, refusal: handshake.Refusal) -> None:
        logger.info("refused a handshake: %d %s", refusal.status, refusal.reason)
        self._count_error("handshake_refused")  # dashboard hook
        connection.queue(refusal.response())
        connection.finish()

    def _open_websocket(self, connection: HubConnection, admission: handshake.Admission) -> None:
        connection.native = admission.native
        codec: Codec
        if admission.native:
            codec = NativeCodec()
        else:
            from ..protocol.legacy import LegacyCodec

            codec = LegacyCodec()
        connection.reader = FrameReader(masked=True, max_size=self.max_message_size)
        connection.stage = Stage.OPEN
        self._connections.handshakes.discard(connection)
        connection.queue(handshake.switching_protocols(admission))
        with self._lock:
            connection.session = self._router.open(codec, connection, time.time())

    # the websocket stage

    def _on_frames(self, connection: HubConnection, data: bytes) -> None:
        assert connection.reader is not None and connection.session is not None
        reader = connection.reader
        try:
            messages = reader.feed(data)
        except FrameError as exc:
            connection.close(exc.code, exc.reason)
            return
        self._on_messages(connection, messages)
        # The messages that came before a bad frame are handled first (above), then the
        # connection fails with the bad frame's close code.
        failure = reader.failure
        if failure is not None:
            connection.close(failure.code, failure.reason)

    def _on_messages(self, connection: HubConnection, messages: list[tuple[int, bytes]]) -> None:
        for opcode, payload in messages:
            if connection.stage is not Stage.OPEN:
                return
            if opcode == OP_BINARY:
                self._on_message(connection, payload)
            elif opcode == OP_TEXT:
                try:
                    text = payload.decode()
                except UnicodeDecodeError:
                    connection.close(CloseCode.INVALID_DATA, "text message is not valid UTF-8")
                    return
                self._on_message(connection, text)
            elif opcode == OP_PING:
                connection.queue(server_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                connection.answer_close(payload)
                return
            # OP_PONG: being read at all is what counts (last_received).

    def _on_message(self, connection: HubConnection, message: Message) -> None:
        """Route one message from ``connection`` and queue what the router answers."""
        session = connection.session
        assert session is not None
        registering = session.state is SessionState.NEW
        out: Output = []
        failure: tuple[CloseCode, str] | None = None
        try:
            with self._lock:
                self._router.receive(session, message, out)
        except errors.ProtocolError as exc:
            failure = (CloseCode.PROTOCOL_ERROR, str(exc))
        except Exception:
            # A router bug must cost one connection, with a close frame, not the hub.
            logger.exception("routing a message from connection %s failed", connection.number)
            failure = (CloseCode.INTERNAL_ERROR, "internal error in the hub")
        if registering and session.state is not SessionState.NEW:
            # A client that reads batches gets the small messages of a turn framed together.
            connection.batch_limit = BATCH_BYTES if session.batches else 0
            self._log_join(connection, session)
        # What the frames before a bad one did still goes out (a batch or a 1.x message holds
        # several): an answer the router took off the books reaches its requester.
        for destination, routed in out:
            destination.transport.queue_message(routed)
        if failure is not None:
            connection.close(*failure)

    def _log_join(self, connection: HubConnection, session: Session) -> None:
        held = ""
        if session.state is SessionState.HELD:
            # A clustered hub's client whose name is being claimed waits a moment, not on hold.
            claiming = getattr(self._router, "claiming", None)
            held = " (on hold: another client has the name)"
            if claiming is not None and claiming.get(session.name) is session:
                held = " (claiming the name in the cluster)"
        kind = "" if connection.native else " (winerp 1.x)"
        logger.info("client %r joined from %s%s%s", session.name, connection.address, kind, held)

    def _deliver(self, out: Output) -> None:
        """Queue the router's output (the cluster's events produce some too)."""
        for destination, message in out:
            destination.transport.queue_message(message)

    def _evict(self, session: Session, reason: str) -> None:
        """Close a client's connection so that it comes back (a clustered hub lost its name)."""
        connection = session.transport
        if isinstance(connection, HubConnection):
            connection.close(CloseCode.SERVICE_RESTART, reason)

    def _leave_router(self, connection: HubConnection) -> None:
        """``connection`` ended: take its client out of the router and tell the others."""
        session = connection.session
        if session is None or session.state is SessionState.CLOSED:
            return
        error = end_error(connection.why)  # dashboard hook: connections the hub ended, by kind
        if error is not None:
            self._count_error(error)
        if session.state is not SessionState.NEW:
            logger.info(
                "client %r (%s) left: %s", session.name, connection.address, connection.why or "connection closed"
            )
        with self._lock:
            out = self._router.close(session)
        for destination, message in out:
            destination.transport.queue_message(message)

    # the sweep

    def _sweep(self, now: float) -> None:
        """Drop connections that went silent, never registered, or never finished closing."""
        dead_after = 5 * self.heartbeat
        for connection in list(self._connections.all):
            try:
                self._sweep_one(connection, now, dead_after)
            except Exception:  # noqa: BLE001 - a bug: logged by _fail; it costs this connection only
                self._fail(connection)

    def _sweep_one(self, connection: HubConnection, now: float, dead_after: float) -> None:
        """Drop ``connection`` if it went silent, never registered, or never finished closing."""
        stage = connection.stage
        silence = now - connection.last_received
        if stage is Stage.TLS or stage is Stage.HTTP:
            if now - connection.connected_at > self.handshake_timeout:
                logger.info("closing a connection that did not finish its handshake in time")
                connection.abort()
        elif stage is Stage.CLOSING or stage is Stage.HALF_CLOSED:
            if connection.closing_overdue(now):
                connection.abort()
        elif connection.session is None or connection.session.state is SessionState.NEW:
            if now - connection.connected_at > self.handshake_timeout:
                connection.close(CloseCode.POLICY_VIOLATION, "no registration in time")
        elif silence > dead_after:
            # A silent peer (stopped, hung, or vanished with its TCP connection half-open)
            # will never answer a close frame: waiting for it would only delay failing the
            # requests that wait on it.
            reason = f"heartbeat timeout: silent for {silence:.1f} s"
            logger.info(
                "dropping connection %s (%s): %d %s",
                connection.number,
                connection.name,
                CloseCode.POLICY_VIOLATION,
                reason,
            )
            connection.abort(CloseCode.POLICY_VIOLATION, reason)
        elif not connection.native and silence > self.heartbeat:
            # winerp 1.x clients send nothing while idle, but their websocket library
            # answers a websocket ping, and the pong counts as traffic.
            connection.queue(_PING_FRAME)

    # stopping

    def _shut_down(self) -> None:
        """Tell every client the hub is going away, and give them `stop`'s timeout to close."""
        assert self._poller is not None
        if self._cluster is not None:
            self._cluster.detach()  # other hubs' frames are read no more
        if self._listener is not None:
            self._poller.unregister(self._listener)
            self._listener.close()
            self._listener = None
        connections = self._connections
        for connection in list(connections.all):
            if connection.stage is Stage.OPEN:
                # winerp 1.x clients take a 1001 close for a normal one and never notice; 1012
                # ("service restart") makes them see the drop.
                code = CloseCode.GOING_AWAY if connection.native else CloseCode.SERVICE_RESTART
                connection.close(code, "hub shutting down")
            else:
                connection.abort()
        self._connections.flush_all(self._fail)
        deadline = time.monotonic() + self._stop_timeout
        while connections.all:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for fd, events in self._poller.poll(min(remaining, 0.1)):
                ready = connections.by_fd.get(fd)
                if ready is None:
                    self._drain_waker()
                    continue
                self._on_event(ready, events, time.monotonic())
            self._connections.flush_all(self._fail)

    def _close_everything(self) -> None:
        for connection in list(self._connections.all):
            connection.abort()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._poller is not None:
            self._poller.close()
        if self._waker is not None:
            for end in self._waker:
                end.close()
