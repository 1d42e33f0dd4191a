"""The client core: one connection's sockets, threads, pending requests and reconnects.

Everything that does not depend on *how* a caller waits lives here, once, for both
facades. One thread per client, ``winerp-reader-<name>``, owns the connection: it connects,
registers, reads every frame, resolves pending futures, sends heartbeats and reconnects.
A facade may offer to read instead (`Host.lend_reader`): the asyncio client's event loop
reads its own connection, so answers and requests reach it without a thread hand-off,
while the reader thread stands by and reads in its place if the loop stalls. Callers on any
thread send through `_send`, which writes directly when the socket is free and otherwise
leaves the frame for the thread that is writing (so a burst leaves as one write). Nothing
here blocks a caller on the network: a request returns a `Call`, which tells the listener
the facade gave it when it ends; the facades decide how to wait for that, and where user
handlers and event handlers run (the `Host` they pass in).

websocket-client only opens the connection (TCP, TLS and the opening handshake); from
then on the core reads and writes the raw socket itself, framing with `winerp.wire.websocket`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import inspect
import itertools
import logging
import os
import random
import select
import socket
import ssl
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import websocket

from .. import errors
from ..protocol.client import ClientProtocol, ClientState, error_from_failure
from ..protocol.frames import (
    HUB,
    SUBPROTOCOL,
    Failure,
    Information,
    Ping,
    Pong,
    Presence,
    Request,
    Response,
    Welcome,
    decode_value,
    name_problem,
)
from ..wire.close import CloseCode
from ..wire.handshake import TOKEN_HEADER
from ..wire.websocket import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    FrameReader,
    client_frame,
    close_payload,
    parse_close,
)

__all__ = ["ClientCore", "Host", "Call", "Gathering", "Backoff"]

# Named for what it logs, not for the module path: a stable name for users to configure.
logger = logging.getLogger("winerp.client")

_EVENT_NAMES = frozenset(
    {
        "on_winerp_connect",
        "on_winerp_ready",
        "on_winerp_disconnect",
        "on_winerp_request",
        "on_winerp_response",
        "on_winerp_information",
        "on_winerp_error",
        "on_winerp_peer_join",
        "on_winerp_peer_leave",
    }
)
# Longest one connection attempt (TCP, TLS, the websocket handshake and the registration)
# may take when `start` set no deadline; the hub gives a new connection as long.
_ATTEMPT_TIMEOUT = 10.0
# Shortest: a last attempt made at a start deadline still gets to hear a refusal.
_MIN_ATTEMPT = 0.05
# `_Connection.lost` of a connection the hub did not register by the attempt's deadline.
_NOT_REGISTERED = "no registration in time"
# Frames queued behind a busy writer before further senders wait for it (back-pressure).
_MAX_QUEUED_FRAMES = 1024
_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
# Bytes asked of the socket per read: a burst of small messages comes in one recv.
_READ_SIZE = 262144
# The hub enforces the size limits; a client accepts anything the hub may forward. The
# bound only stops a nonsense length from making the client buffer forever; it is raised
# when a hub announces a larger limit (see `_receive_limit`).
_MIN_RECEIVE_LIMIT = 1 << 31


def _receive_limit(max_message_size: int) -> int:
    """The largest message a client accepts when messages up to ``max_message_size`` flow.

    Twice the limit, plus room for the envelope: a forwarded message is the sender's
    payload re-wrapped by the hub (its name, the route), never a multiple of it.
    """
    return max(_MIN_RECEIVE_LIMIT, 2 * max_message_size + 1024)


class Host(Protocol):
    """What a facade provides to the core: where user code runs."""

    def run_route(
        self,
        handler: Callable[..., Any],
        source: str,
        kwargs: dict[str, Any],
        finish: Callable[[Any, BaseException | None], None],
    ) -> None:
        """Run a route handler off the reader thread, then call ``finish(value, error)``."""

    def run_event(self, handler: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Run an event handler off the reader thread, events in the order they come."""

    def lend_reader(self, fileno: int, read: Callable[[], bool]) -> Callable[[], bool] | None:
        """Offer to read the connection whose socket is ``fileno``; None declines.

        A facade whose callers wait on an event loop accepts, and calls ``read()`` whenever
        the socket is readable, until it returns False (the connection is gone). It returns
        a check that stays true while it can read (e.g. its loop is not closed). Meanwhile
        the core's own thread stays off the socket.
        """


class Backoff:
    """Exponential backoff with full jitter, for reconnect attempts.

    Args:
        initial: First delay, in seconds.
        maximum: Cap on the delay, in seconds.
        factor: Growth per failed attempt.
    """

    def __init__(self, initial: float = 0.1, maximum: float = 3.0, factor: float = 2.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.attempts = 0

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count the attempt."""
        ceiling = min(self.maximum, self.initial * self.factor**self.attempts)
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Start over after a success."""
        self.attempts = 0


class Call:
    """One request in flight, ended exactly once: with a value or with an error.

    Lighter than a `concurrent.futures.Future` (no lock, no condition): the core ends a call
    only after taking it out of its table of calls in flight, so one thread alone ever ends
    it, and the listener given at creation learns of it at once, on that thread.
    """

    __slots__ = ("error", "id", "listener", "value")

    def __init__(self, request_id: int, listener: Callable[[Call], None]) -> None:
        self.id = request_id
        self.listener = listener
        self.value: Any = None
        self.error: BaseException | None = None

    def end(self, value: Any, error: BaseException | None) -> None:
        """Record the outcome and tell the listener. Called once, by the core."""
        self.value = value
        self.error = error
        self.listener(self)

    def outcome(self) -> Any:
        """The value, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.value


class Gathering:
    """Several requests of one `ClientCore.request_many` call, ended together.

    ``future`` resolves to ``{name: value or WinerpError}`` once every call has ended.
    """

    def __init__(self, core: ClientCore) -> None:
        self._core = core
        self._lock = threading.Lock()
        self._calls: dict[str, Call] = {}
        self._results: dict[str, Any] = {}
        self._expected: int | None = None
        self.future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

    def _add(self, name: str, call: Call) -> None:
        with self._lock:
            if name not in self._results:
                self._calls[name] = call

    def _listener(self, name: str) -> Callable[[Call], None]:
        def _ended(call: Call) -> None:
            self._settle(name, call.error if call.error is not None else call.value)

        return _ended

    def _expect(self, count: int) -> None:
        with self._lock:
            self._expected = count
            done = len(self._results) == count
        if done:
            self._finish()

    def _settle(self, name: str, value: Any) -> None:
        with self._lock:
            self._results[name] = value
            done = self._expected is not None and len(self._results) == self._expected
        if done:
            self._finish()

    def _finish(self) -> None:
        _resolve(self.future, dict(sorted(self._results.items())))

    def expire(self, timeout: float) -> None:
        """End every call still in flight with `RequestTimeout`."""
        with self._lock:
            calls = list(self._calls.values())
            if self._expected is None:
                self._expected = len(self._results)
        for call in calls:
            self._core.expire(call, timeout)
        if not self.future.done() and self._expected is not None and len(self._results) >= self._expected:
            self._finish()


def _readable(sock: socket.socket, timeout: float, tls: bool = False) -> bool:
    """True when a read of ``sock`` would not block (False once ``timeout`` passed).

    An SSL socket's recv returns at most one TLS record; the rest waits in the SSL buffer,
    where select() cannot see it.
    """
    if tls and sock.pending():  # type: ignore[attr-defined]
        return True
    return bool(select.select([sock], [], [], timeout)[0])


def _positional_capacity(handler: Callable[..., Any]) -> int | None:
    """How many positional arguments ``handler`` takes (None: any number)."""
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = [p.kind for p in parameters]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return None
    return sum(k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) for k in kinds)


def _resolve(future: concurrent.futures.Future[Any], value: Any = None, error: BaseException | None = None) -> bool:
    """Settle ``future`` unless it is already settled or cancelled; True if this call did."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except concurrent.futures.InvalidStateError:
        return False
    return True


def hub_address(address: str, ssl_context: ssl.SSLContext | None = None) -> tuple[str, int, ssl.SSLContext | None]:
    """``(host, port, TLS context)`` of one ``hubs=`` entry: ``host:port``, ``ws://...`` or ``wss://...``.

    A ``wss://`` address uses ``ssl_context``, or the system's default context; ``host:port``
    uses ``ssl_context`` if given; ``ws://`` never TLS.

    Raises:
        ValueError: not an address.
    """
    from urllib.parse import urlsplit

    from ..defaults import DEFAULT_PORT

    text = address.strip() if isinstance(address, str) else ""
    url = urlsplit(text if "://" in text else f"ws://{text}")
    try:
        port = url.port or DEFAULT_PORT
    except ValueError:
        port = -1
    if url.scheme not in ("ws", "wss") or not url.hostname or port < 0 or url.path not in ("", "/"):
        raise ValueError(f"invalid hub address {address!r}: use host:port, ws://host:port or wss://host:port")
    if url.scheme == "wss":
        return url.hostname, port, ssl_context or ssl.create_default_context()
    # host:port takes the client's ssl_context, as host= and port= do; ws:// is plain.
    return url.hostname, port, ssl_context if "://" not in text else None


def _attempt_deadline(start_deadline: float | None) -> float:
    """When one connection attempt must be over: by ``start``'s deadline, if it has one."""
    now = time.monotonic()
    if start_deadline is None:
        return now + _ATTEMPT_TIMEOUT
    return max(now + _MIN_ATTEMPT, min(start_deadline, now + _ATTEMPT_TIMEOUT))


def _shut(sock: socket.socket) -> None:
    """Shut ``sock`` down both ways, waking any thread blocked on it; never raises.

    The plain socket's method even for a TLS socket: `ssl.SSLSocket.shutdown` also drops
    its TLS state, under the feet of a thread still in the handshake.
    """
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _Watchdog:
    """Shuts a connecting socket down when the attempt's deadline passes.

    A socket timeout bounds each read, not the whole opening: a server that answers one
    byte at a time would keep an attempt going for ever. Shutting the socket down from
    this timer's thread wakes the blocked read at once, whatever stage it is in.
    """

    def __init__(self, deadline: float, name: str, sock: socket.socket) -> None:
        self._lock = threading.Lock()
        self._sock = sock
        self._over = False
        self.fired = False
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.name = name
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        """Watch ``sock`` from now on (the TLS socket that took over the plain one)."""
        with self._lock:
            self._sock = sock
            if self.fired:
                _shut(sock)

    def _fire(self) -> None:
        with self._lock:
            if not self._over:
                self.fired = True
                _shut(self._sock)

    def stop(self) -> bool:
        """Stand down; True if the deadline had passed (the socket was shut down)."""
        with self._lock:
            self._over = True
        self._timer.cancel()
        self._timer.join()  # ends at once once cancelled: no thread outlives the attempt
        return self.fired


# Every client core of this process, so that a forked child can disown them all.
_cores: weakref.WeakSet[ClientCore] = weakref.WeakSet()


def _disown_after_fork() -> None:
    """In a forked child: mark every client of the parent as the parent's (see `ClientCore.forked`)."""
    for core in list(_cores):
        core._forget_parent()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_disown_after_fork)


class _Connection:
    """One live websocket and what belongs to it alone."""

    def __init__(self, ws: websocket.WebSocket, protocol: ClientProtocol) -> None:
        self.ws = ws
        self.protocol = protocol
        assert ws.sock is not None
        self.sock: socket.socket = ws.sock
        self.tls = isinstance(ws.sock, ssl.SSLSocket)
        self.reader = FrameReader(masked=False, max_size=_receive_limit(protocol.max_message_size))
        # Whole websocket frames (already masked) waiting for the writer.
        self.queue: collections.deque[bytes] = collections.deque()
        self.write_lock = threading.Lock()
        self.alive = True
        self.close_code: int | None = None
        self.close_reason = ""
        # Set once the Hello is on its way: routes added after that go as AddRoutes.
        self.hello_sent = False
        self.was_ready = False
        # Set once the hub answered the Hello (ready or on hold).
        self.welcomed = False
        # Why the connection ended, for the log, when no close frame says it.
        self.lost = ""
        # The right to read the socket: the connection's own thread, or a guest (an event
        # loop that reads it so that what its callers wait for needs no hand-off between
        # threads; see Host.lend_reader).
        self.read_lock = threading.Lock()
        self.turn = threading.Condition(threading.Lock())
        self.guest: Callable[[], bool] | None = None
        self.bytes_read = 0
        # Reused by every read: a fresh 256 KiB bytes object per recv() would cost an mmap,
        # an mremap and a munmap each time.
        self.buffer = bytearray(_READ_SIZE)
        self.view = memoryview(self.buffer)


class _HubClosed(Exception):
    """The hub closed the websocket (its close frame was read and answered)."""


class ClientCore:
    """The connection machinery shared by `winerp.sync.Client` and `winerp.aio.Client`.

    Thread-safe: every public method may be called from any thread, and none blocks on
    the network.

    Args:
        name: The client's unique name on the hub.
        host: Hub address.
        port: Hub port.
        host_hooks: Where user handlers run (the facade's private `winerp.client.HostHooks`).
        token: Shared secret presented to the hub.
        ssl_context: Connect with TLS (``wss://``) using this context.
        reconnect: Come back after a dropped connection.
        max_message_size: Largest message this client sends; a smaller limit announced by the hub wins.
        backoff: Reconnect delays.
        hubs: Hub addresses (``host:port``, ``ws://host:port``, ``wss://host:port``) to use
            instead of ``host`` and ``port``: the client connects to the first that answers
            and, when its hub goes away, to the next one, in order, round and round.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        host_hooks: Host,
        *,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reconnect: bool = True,
        max_message_size: int = 8 * 1024 * 1024,
        backoff: Backoff | None = None,
        hubs: Iterable[str] | None = None,
    ) -> None:
        problem = name_problem(name)
        if problem is not None:
            # The hub would refuse it with a close frame; say so here, before connecting.
            raise ValueError(problem)
        self.name = name
        self.host = host
        self.port = port
        self.token = token if token is not None else (os.environ.get("WINERP_TOKEN") or None)
        self.ssl_context = ssl_context
        #: Where to connect, in order: ``(host, port, TLS context)``; the first is in use.
        self._hubs = [hub_address(address, ssl_context) for address in hubs] if hubs is not None else []
        if hubs is not None and not self._hubs:
            raise ValueError("hubs: give at least one hub address")
        if self._hubs:
            self.host, self.port, self.ssl_context = self._hubs[0]
        self._hub_index = 0
        #: Failed attempts since the last connection: the backoff waits once per round of hubs.
        self._failures = 0
        self.reconnect = reconnect
        self.max_message_size = max_message_size
        self.backoff = backoff or Backoff()
        self.routes: dict[str, Callable[..., Any]] = {}
        self.events: dict[str, list[tuple[Callable[..., Any], int | None]]] = {}
        self._hooks = host_hooks
        self._lock = threading.Lock()
        self._pending: dict[int, Call] = {}
        self._connection: _Connection | None = None
        self._state = ClientState.CONNECTING
        self._authorized = False
        self._ready = threading.Event()
        self._ready_waiters: list[concurrent.futures.Future[None]] = []
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_future: concurrent.futures.Future[None] | None = None
        # One request-id counter for every connection of this client: `_pending` is keyed
        # by id across reconnects, so an id must never come back (see ClientProtocol).
        self._request_ids = itertools.count(1)
        # The error that made this client give up for good (start's deadline, a refused
        # token, a drop with reconnect off, close()); wait_until_ready raises it at once.
        self._given_up: errors.WinerpError | None = None
        self._forked = False
        self._was_ever_ready = False
        _cores.add(self)

    # state

    @property
    def is_ready(self) -> bool:
        """True while connected, registered and not on hold."""
        return self._state is ClientState.READY

    @property
    def on_hold(self) -> bool:
        """True while another client holds this name and this one waits for it."""
        return self._state is ClientState.HELD

    @property
    def authorized(self) -> bool:
        """True once the hub has accepted this client (its token and its name)."""
        return self._authorized

    @property
    def started(self) -> bool:
        """True once `start` was called (and until `close`)."""
        return self._thread is not None and not self._closing.is_set()

    @property
    def forked(self) -> bool:
        """True in a forked child process: the client belongs to the parent and refuses every call."""
        return self._forked

    def wait_until_ready(self, timeout: float | None) -> bool:
        """Block until ready; return False on timeout. For the sync facade.

        Raises:
            WinerpError: the client gave up (the error that ended it), at once.
        """
        if self._ready.is_set():
            return True
        future = self.ready_future()
        try:
            future.result(timeout)
        except concurrent.futures.TimeoutError:
            # RequestTimeout is a TimeoutError too: it may be the error the client gave up with.
            if not future.done():
                future.cancel()
                return False
            raise
        return True

    def ready_future(self) -> concurrent.futures.Future[None]:
        """A future that ends when the client is next ready (at once if it is now).

        It ends with the error that made the client give up, at once if it has; a client
        not started yet is waited for (``create_task(start())`` then ``wait_until_ready()``).
        """
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        if self._forked:
            future.set_exception(self._fork_error())
            return future
        with self._lock:
            if self._ready.is_set():
                future.set_result(None)
            elif self._given_up is not None:
                future.set_exception(self._given_up)
            else:
                self._ready_waiters.append(future)
        return future

    # lifecycle

    def start(self, timeout: float | None) -> concurrent.futures.Future[None]:
        """Start connecting; the future ends once ready (or on hold), or with the error.

        With a ``timeout``, the future ends within it: with `HubUnreachable` (refused),
        `UnauthorizedError` (never retried), or `RequestTimeout` (no answer in time), and the
        client gives up. With None and reconnect on, attempts go on until the hub answers.
        """
        if self._forked:
            raise self._fork_error()
        with self._lock:
            if self._closing.is_set():
                raise errors.ClientNotReadyError("this client was closed; make a new one")
            if self._thread is not None:
                assert self._start_future is not None
                return self._start_future
            self._start_future = concurrent.futures.Future()
            deadline = None if timeout is None else time.monotonic() + timeout
            self._thread = threading.Thread(
                target=self._run, args=(deadline,), name=f"winerp-reader-{self.name}", daemon=True
            )
            self._thread.start()
            return self._start_future

    def close(self) -> None:
        """Leave the hub; calls in flight fail with `ConnectionLost`. Idempotent.

        In a forked child it only marks the client closed: the connection is the parent's.
        """
        self._closing.set()
        closed = errors.ClientNotReadyError(f"client {self.name!r} was closed")
        if self._forked:
            self._given_up = closed
            return
        with self._lock:
            if self._given_up is None:
                self._given_up = closed
        connection = self._connection
        if connection is not None:
            # _send never raises on a broken socket: it drops the connection instead.
            self._send(connection, close_payload(CloseCode.NORMAL, "client closing"), OP_CLOSE, wait=True)
            self._drop(connection)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        if self._start_future is not None:
            _resolve(self._start_future, error=errors.ClientNotReadyError("the client was closed while starting"))
        self._fail_pending(errors.ConnectionLost("the client was closed"))
        self._give_up(closed)

    def _give_up(self, error: errors.WinerpError) -> None:
        """The client is done for good: whoever waits for it to be ready gets ``error`` (or the earlier one)."""
        with self._lock:
            if self._given_up is None:
                self._given_up = error
            error = self._given_up
            waiters, self._ready_waiters = self._ready_waiters, []
        if self._start_future is not None:
            _resolve(self._start_future, error=error)
        for waiter in waiters:
            _resolve(waiter, error=error)

    def _fork_error(self) -> errors.ClientNotReadyError:
        return errors.ClientNotReadyError(
            f"client {self.name!r} belongs to the process that started it, not to this forked child "
            f"(e.g. a gunicorn worker under --preload, or multiprocessing with fork): "
            f"start a client in each worker"
        )

    def _forget_parent(self) -> None:
        """Called in a forked child (see `_disown_after_fork`): disown the parent's connection.

        Nothing is written to or shut on the inherited socket, which the parent still uses;
        every call raises at once. The locks are made anew: a thread of the parent may have
        held one at the fork, and that thread does not exist here to release it.
        """
        self._forked = True
        self._connection = None
        self._state = ClientState.CLOSED
        self._authorized = False
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._ready_waiters = []
        self._pending = {}

    # routes and events

    def add_route(self, name: str, handler: Callable[..., Any]) -> None:
        """Register a route; tells the hub at once when connected."""
        with self._lock:
            if name in self.routes:
                raise ValueError(f"route {name!r} is already registered")
            self.routes[name] = handler
            connection = self._connection
            announce = connection is not None and connection.hello_sent
        if announce:
            assert connection is not None
            self._send(connection, connection.protocol.add_routes([name]))

    def add_event(self, name: str, handler: Callable[..., Any]) -> None:
        """Register an event handler under its event name. Raises `NameError` for unknown names."""
        if name not in _EVENT_NAMES:
            raise NameError(f"unknown event {name!r}; events are {', '.join(sorted(_EVENT_NAMES))}")
        self.events.setdefault(name, []).append((handler, _positional_capacity(handler)))

    def emit(self, name: str, *args: Any) -> None:
        """Hand an event to its handlers (through the facade), trimmed to what each accepts."""
        for handler, capacity in self.events.get(name, ()):
            self._hooks.run_event(handler, args if capacity is None else args[:capacity])

    # calls

    def request(self, peer: str, route: str, kwargs: dict[str, Any], listener: Callable[[Call], None]) -> Call:
        """Send a request; ``listener(call)`` runs once it ends, with the answer or the error.

        The listener may run on any thread, before this returns too (a connection that
        dropped meanwhile); it must not block.

        Raises:
            ClientNotReadyError: not connected, not registered, or on hold.
            TypeError: an argument cannot be encoded.
            PayloadTooLarge: the request exceeds the size limit.
        """
        connection = self._live()
        request_id, frame = connection.protocol.request(peer, route, kwargs)
        return self._track(connection, Call(request_id, listener), frame)

    def ping(self, peer: str | None, listener: Callable[[Call], None]) -> Call:
        """Ping the hub (``peer=None``) or a client; the call ends with True or False."""
        connection = self._live()
        request_id, frame = connection.protocol.ping(HUB if peer is None else peer)
        return self._track(connection, _PingCall(request_id, listener), frame)

    def inform(self, data: Any, peers: list[str]) -> None:
        """Send ``data`` to ``peers`` (everyone else when empty); fire and forget.

        Raises:
            ClientNotReadyError: not connected, not registered, or on hold.
            TypeError: the data cannot be encoded.
            PayloadTooLarge: the message exceeds the size limit.
        """
        connection = self._live()
        self._send(connection, connection.protocol.inform(data, peers))

    def call_hub(self, route: str, args: dict[str, Any] | None, listener: Callable[[Call], None]) -> Call:
        """Call one of the hub's own routes (``peers``, ``routes``, ``status``)."""
        return self.request(HUB, route, args or {}, listener)

    def peers(self, routes: bool, listener: Callable[[Call], None]) -> Call:
        """Ask the hub for the other ready clients: sorted names, or ``{name: sorted routes}``."""
        connection = self._live()
        request_id, frame = connection.protocol.request(HUB, "peers", {"routes": True} if routes else {})
        return self._track(connection, _PeersCall(request_id, listener, routes), frame)

    def request_many(self, route: str, sources: Iterable[str] | None, kwargs: dict[str, Any]) -> Gathering:
        """Call ``route`` on several clients at once (every one that has it when ``sources`` is None)."""
        gathering = Gathering(self)

        def _launch(names: list[str]) -> None:
            for name in names:
                try:
                    gathering._add(name, self.request(name, route, kwargs, gathering._listener(name)))
                except errors.WinerpError as exc:
                    gathering._settle(name, exc)
            gathering._expect(len(names))

        if sources is not None:
            self._live()
            _launch(list(dict.fromkeys(sources)))
            return gathering

        def _looked_up(lookup: Call) -> None:
            if lookup.error is not None:
                _resolve(gathering.future, error=lookup.error)
            else:
                _launch(lookup.value)

        self.call_hub("routes", {"route": route}, _looked_up)
        return gathering

    def expire(self, call: Call, timeout: float) -> None:
        """End ``call`` with `RequestTimeout` unless it has ended already (or is ending now)."""
        if self._pending.pop(call.id, None) is not None:
            call.end(None, errors.RequestTimeout(f"no answer within {timeout} s"))

    def forget(self, call: Call) -> None:
        """Drop ``call`` (its waiter gave up); a late answer is ignored, the listener not told."""
        self._pending.pop(call.id, None)

    def _live(self) -> _Connection:
        connection = self._connection
        if connection is None or self._state is not ClientState.READY:
            if self._forked:
                raise self._fork_error()
            if self._state is ClientState.HELD:
                raise errors.ClientNotReadyError(f"client {self.name!r} is on hold: another client holds the name")
            raise errors.ClientNotReadyError(f"client {self.name!r} is not ready (not started, or disconnected)")
        return connection

    def _track(self, connection: _Connection, call: Call, frame: bytes) -> Call:
        self._pending[call.id] = call
        if not connection.alive:
            # The connection dropped after _live(): fail now rather than never.
            if self._pending.pop(call.id, None) is not None:
                call.end(None, errors.ConnectionLost("the connection to the hub dropped"))
        else:
            self._send(connection, frame)
        return call

    # writing

    def _send(self, connection: _Connection, payload: bytes, opcode: int = OP_BINARY, *, wait: bool = False) -> None:
        """Write ``payload`` as one websocket frame, or queue it for the thread already writing.

        Thread-safe. Every frame, data or control (pong, close), goes through here, so writes
        never interleave. With ``wait``, return only once the frame has been written (or
        the write failed), e.g. a close frame before the socket is shut. A failed write
        drops the connection; nothing is raised.
        """
        queue = connection.queue
        lock = connection.write_lock
        if not queue and lock.acquire(blocking=False):
            # The usual case: nobody else is writing, and nothing waits for a writer.
            try:
                written = self._write(connection, client_frame(opcode, payload))
            finally:
                lock.release()
            if not written or not queue:
                return
            # Frames queued meanwhile by threads that found the lock taken: send them below.
        else:
            queue.append(client_frame(opcode, payload))
        while queue:
            if not lock.acquire(blocking=wait or len(queue) > _MAX_QUEUED_FRAMES):
                return  # the writing thread re-checks the queue after releasing the lock
            try:
                # Only the lock holder takes from the queue, but the writer before it may
                # have emptied the queue between the check above and the acquire.
                if queue:
                    data = queue.popleft()
                    if queue:
                        parts = [data]
                        while queue:
                            parts.append(queue.popleft())
                        data = b"".join(parts)
                    if not self._write(connection, data):
                        return
            finally:
                lock.release()
        if wait:
            # Another thread took the frame from the queue: wait until its write is over.
            with lock:
                pass

    def _write(self, connection: _Connection, data: bytes) -> bool:
        """Write ``data`` (hold write_lock); on failure drop the connection and return False."""
        try:
            connection.sock.sendall(data)
        except OSError as exc:
            logger.debug("send failed: %s", exc)
            connection.queue.clear()
            self._drop(connection)
            return False
        return True

    # the reader thread

    def _run(self, start_deadline: float | None) -> None:
        """The reader thread: connect, serve, reconnect per the policy, until the client gives up.

        Whatever happens, it ends by telling every waiter why (`_give_up`): no thread of a
        client ends silently.
        """
        try:
            error = self._keep_connected(start_deadline)
        except Exception as exc:  # a bug: logged with its traceback, and the client gives up visibly
            logger.exception("client %r: the reader thread failed", self.name)
            error = errors.ConnectionLost(f"the client failed: {exc!r}")
        self._state = ClientState.CLOSED
        self._give_up(error)

    def _keep_connected(self, start_deadline: float | None) -> errors.WinerpError:
        """Connection attempts one after another, per the policy; return the error that ends them."""
        start_future = self._start_future
        assert start_future is not None
        while not self._closing.is_set():
            starting = not start_future.done()
            deadline = _attempt_deadline(start_deadline if starting else None)
            connection, failure = self._attempt(deadline)
            if self._closing.is_set():
                break
            if connection is not None and connection.welcomed:
                self._log_lost(connection)
                if not self.reconnect:
                    return errors.ConnectionLost("the connection to the hub dropped (reconnect is off)")
                delay = 0.05 if connection.close_code == CloseCode.GOING_AWAY else self.backoff.next_delay()
                self._failures = 0
                if self._next_hub():
                    delay = 0.05  # another hub: no reason to wait
                logger.info("client %r: reconnecting in %.1f s to %s", self.name, delay, self._address())
            else:
                assert failure is not None
                if self._gives_up(failure, starting, start_deadline):
                    logger.info("client %r: gave up connecting to %s: %s", self.name, self._address(), failure)
                    return failure
                address = self._address()
                self._failures += 1
                # With several hubs, the next one is tried at once; the backoff counts rounds.
                delay = self.backoff.next_delay() if self._failures % max(1, len(self._hubs)) == 0 else 0.0
                self._next_hub()
                logger.warning(
                    "client %r: cannot connect to the hub at %s: %s; next attempt in %.1f s",
                    self.name,
                    address,
                    failure,
                    delay,
                )
            self._pause(delay, start_deadline if not start_future.done() else None)
        return errors.ClientNotReadyError(f"client {self.name!r} was closed")

    def _gives_up(self, failure: errors.WinerpError, starting: bool, start_deadline: float | None) -> bool:
        """After a failed attempt: True when the client stops trying."""
        if isinstance(failure, errors.UnauthorizedError):
            logger.error("the hub refused client %r: %s", self.name, failure)
            return True  # a wrong token stays wrong
        if isinstance(failure, errors.ProtocolError) or not self.reconnect:
            return True  # a protocol error would only repeat
        return starting and start_deadline is not None and time.monotonic() >= start_deadline

    def _attempt(self, deadline: float) -> tuple[_Connection | None, errors.WinerpError | None]:
        """One connection: open it, register, serve it until it drops.

        Returns the connection (None if none opened) and, unless the hub welcomed this
        client on it, why not.
        """
        try:
            connection = self._connect(deadline)
        except (errors.HubUnreachable, errors.RequestTimeout, errors.ProtocolError, errors.UnauthorizedError) as exc:
            return None, exc
        except Exception as exc:  # a bug: logged with its traceback, then retried as any failed attempt
            logger.exception("client %r: connecting failed unexpectedly", self.name)
            return None, errors.HubUnreachable(f"connecting failed: {exc!r}")
        try:
            self._serve(connection, deadline)
        except Exception as exc:  # noqa: BLE001 - a bug: logged by _fail_internally; costs this connection only
            self._fail_internally(connection, exc)
        if connection.welcomed:
            return connection, None
        if connection.lost == _NOT_REGISTERED:
            return connection, errors.RequestTimeout(
                f"the hub at {self._address()} did not register client {self.name!r} in time"
            )
        why = f": {connection.close_code} {connection.close_reason}" if connection.close_code else ""
        refused = connection.close_code == CloseCode.PROTOCOL_ERROR
        return connection, (errors.ProtocolError if refused else errors.ConnectionLost)(
            f"the hub closed the connection before this client was ready{why}"
        )

    def _log_lost(self, connection: _Connection) -> None:
        if connection.close_code is not None:
            why = f"closed by the hub: {connection.close_code} {connection.close_reason}".rstrip()
        else:
            why = connection.lost or "the connection dropped"
        logger.warning("client %r: lost the connection to the hub at %s (%s)", self.name, self._address(), why)

    def _address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _next_hub(self) -> bool:
        """Move to the next of several hubs (reader thread only); False when there is one."""
        if len(self._hubs) < 2:
            return False
        self._hub_index = (self._hub_index + 1) % len(self._hubs)
        self.host, self.port, self.ssl_context = self._hubs[self._hub_index]
        return True

    def _pause(self, delay: float, deadline: float | None) -> None:
        if deadline is not None:
            delay = max(0.0, min(delay, deadline - time.monotonic()))
        self._closing.wait(delay)

    def _connect(self, deadline: float) -> _Connection:
        """Open a connection: TCP, TLS and the websocket handshake, all over by ``deadline``.

        Raises:
            HubUnreachable: refused, unreachable, or the handshake failed.
            UnauthorizedError: the hub refused the token.
            RequestTimeout: not done by ``deadline``.
            ProtocolError: the server does not speak winerp.
        """
        remaining = max(_MIN_ATTEMPT, deadline - time.monotonic())
        try:
            sock = socket.create_connection((self.host, self.port), timeout=remaining)
        except socket.timeout:
            raise errors.RequestTimeout(f"no answer from {self._address()} within {remaining:.1f} s") from None
        except OSError as exc:
            raise errors.HubUnreachable(f"cannot connect to {self._address()}: {exc}") from None
        watchdog = _Watchdog(deadline, f"winerp-deadline-{self.name}", sock)
        try:
            ws = self._upgrade(sock, deadline, watchdog)
        finally:
            late = watchdog.stop()
        if late:  # the deadline passed just as the handshake ended
            ws.shutdown()  # type: ignore[no-untyped-call]
            raise errors.RequestTimeout(f"no answer from {self._address()} within {remaining:.1f} s")
        if ws.getsubprotocol() != SUBPROTOCOL:
            ws.close()
            raise errors.ProtocolError(f"the server at {self._address()} does not speak {SUBPROTOCOL}")
        # A blocking socket: with a timeout, Python polls before every send and recv (two
        # system calls more per message). Reads come after select(), and a stuck write is
        # ended by the heartbeat, which shuts the socket down when the hub goes silent.
        ws.settimeout(None)
        protocol = ClientProtocol(self.name, self.max_message_size, time.monotonic(), self._request_ids)
        return _Connection(ws, protocol)

    def _upgrade(self, sock: socket.socket, deadline: float, watchdog: _Watchdog) -> websocket.WebSocket:
        """TLS (if asked) and the websocket handshake on the connected ``sock``; closes it on failure."""
        scheme = "wss" if self.ssl_context is not None else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        header = {TOKEN_HEADER: self.token} if self.token else {}
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
                watchdog.watch(sock)
                sock.do_handshake()
            return websocket.create_connection(
                f"{scheme}://{host}:{self.port}/",
                timeout=max(_MIN_ATTEMPT, deadline - time.monotonic()),
                socket=sock,
                subprotocols=[SUBPROTOCOL],
                header=header,
                enable_multithread=True,
                skip_utf8_validation=True,
                suppress_origin=True,
            )
        except (OSError, ValueError, websocket.WebSocketException) as exc:
            sock.close()
            raise self._opening_error(exc, watchdog.fired) from None

    def _opening_error(self, exc: BaseException, late: bool) -> errors.WinerpError:
        """The error a failed opening handshake gives `start`."""
        if late or isinstance(exc, (socket.timeout, websocket.WebSocketTimeoutException)):
            return errors.RequestTimeout(f"no answer from {self._address()} in time (opening handshake)")
        if isinstance(exc, websocket.WebSocketBadStatusException):
            if exc.status_code == 401:
                return errors.UnauthorizedError("the hub refused the token")
            return errors.HubUnreachable(f"the hub refused the handshake: {exc}")
        return errors.HubUnreachable(f"cannot connect to {self._address()}: {exc}")

    def _serve(self, connection: _Connection, deadline: float) -> None:
        """Register on ``connection`` and read it until it drops.

        Until the hub welcomes this client, ``deadline`` bounds the wait: a hub that accepts
        the websocket but never answers the registration ends the attempt in time.
        """
        self._connection = connection
        protocol = connection.protocol
        with self._lock:
            hello = protocol.hello(self.routes)
            announced = set(self.routes)
        self._send(connection, hello)
        with self._lock:
            # From now on add_route sends each new route itself (after the Hello); the
            # routes added while the Hello was being built and sent go here.
            connection.hello_sent = True
            late = [name for name in self.routes if name not in announced]
        if late:
            self._send(connection, protocol.add_routes(late))
        sock = connection.sock
        tls = isinstance(sock, ssl.SSLSocket)
        tick = protocol.heartbeat / 4
        next_beat = 0.0
        registering = True
        try:
            while connection.alive:
                now = time.monotonic()
                # `registering` spares a look at the connection on every turn once welcomed.
                if registering and now >= deadline and not connection.welcomed:
                    connection.lost = _NOT_REGISTERED
                    break
                if now >= next_beat:
                    registering = registering and not connection.welcomed
                    if connection.guest is not None and _readable(sock, 0, tls):
                        protocol.heard(now)  # the hub spoke; the guest has yet to read it
                    beat = protocol.heartbeat_due(now)
                    if beat is not None:
                        self._send(connection, beat)
                    next_beat = now + tick
                if connection.guest is not None:
                    self._stand_by(connection, tick)
                elif _readable(sock, tick, tls):
                    self._read_available(connection)
        except errors.ConnectionLost as exc:  # the heartbeat found the hub silent
            connection.lost = str(exc)
        except (OSError, ValueError) as exc:  # select() on a socket close() shut
            self._log_read_error(connection, exc)
        except Exception as exc:  # noqa: BLE001 - a bug: logged by _fail_internally; costs this connection only
            self._fail_internally(connection, exc)
        finally:
            self._drop(connection)
            if self._authorized or connection.was_ready:
                self.emit("on_winerp_disconnect")
                self.backoff.reset()
            self._authorized = False

    def _fail_internally(self, connection: _Connection, exc: Exception) -> None:
        """An unexpected error (a bug) while serving ``connection``: log it, close with 1011, drop it.

        Call from the ``except`` block, so the log has the traceback. The reader thread
        then reconnects as after any drop, per the client's policy.
        """
        logger.exception("client %r: unexpected error; closing the connection (1011)", self.name)
        connection.lost = f"unexpected error in the client: {exc!r}"
        if connection.alive:
            payload = close_payload(CloseCode.INTERNAL_ERROR, "internal error in the client")
            self._send(connection, payload, OP_CLOSE, wait=True)  # written before the socket is shut
        self._drop(connection)

    def _stand_by(self, connection: _Connection, tick: float) -> None:
        """While a guest reads: wait, and read in its place what it leaves unread.

        A guest may stop reading without saying so (an event loop blocked by user code, or
        closed without closing the client). Bytes that wait a whole tick with no read in
        between are read here, so requests to this client are still served; a guest that
        can no longer read at all gives the socket back for good.
        """
        seen = connection.bytes_read
        with connection.turn:
            connection.turn.wait(tick)
        guest = connection.guest
        if guest is None or not connection.alive:
            return
        if not guest():
            connection.guest = None
        elif connection.bytes_read == seen and _readable(connection.sock, 0):
            self._read_available(connection)

    def _lend(self, connection: _Connection) -> None:
        """Let the facade read ``connection`` (on its event loop) if it offers to."""

        def read() -> bool:
            try:
                self._read_available(connection)
            except Exception as exc:  # noqa: BLE001 - a bug: logged by _fail_internally; the loop reads on
                self._fail_internally(connection, exc)
            return connection.alive

        guest = self._hooks.lend_reader(connection.sock.fileno(), read)
        if guest is not None:
            connection.guest = guest

    def _read_available(self, connection: _Connection) -> None:
        """Read what has arrived, unless another thread is reading; never blocks.

        The one way in to `_read_once`, for the connection's own thread, a guest and the
        stand-by alike. Errors end the connection here; its own thread then sees it gone.
        """
        if not connection.read_lock.acquire(blocking=False):
            return
        try:
            # Another reader may have taken what woke this one: never block here. A plain
            # socket is read without waiting; TLS (no recv flags) is checked first.
            tls = connection.tls
            if connection.alive and ((_MSG_DONTWAIT and not tls) or _readable(connection.sock, 0, tls)):
                self._read_once(connection, _MSG_DONTWAIT if not tls else 0)
        except BlockingIOError:
            pass
        except _HubClosed:
            self._drop(connection)
        except (FrameError, errors.ProtocolError) as exc:
            self._log_read_error(connection, exc)
            # Fail the websocket as RFC 6455 section 7.1.7 asks: a close frame with the
            # reason first (1002 protocol error, 1007 invalid data, 1009 too big), then drop.
            code, reason = (
                (exc.code, exc.reason) if isinstance(exc, FrameError) else (CloseCode.PROTOCOL_ERROR, str(exc))
            )
            self._last_frame(connection, close_payload(code, reason))
            self._drop(connection)
        except (OSError, ValueError) as exc:
            self._log_read_error(connection, exc)
            self._drop(connection)
        finally:
            connection.read_lock.release()

    def _last_frame(self, connection: _Connection, close: bytes) -> None:
        """Send the close frame ``close`` after what is queued, and make it the last frame sent.

        RFC 6455 section 5.5.1: nothing may follow a close frame. Once it is out the socket
        is shut for writing (under the write lock), so an answer a route handler finishes
        later fails to write instead of following the close frame.
        """
        with connection.write_lock:
            queue = connection.queue
            parts = [queue.popleft() for _ in range(len(queue))]
            if self._write(connection, b"".join([*parts, client_frame(OP_CLOSE, close)])):
                try:
                    connection.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def _log_read_error(self, connection: _Connection, exc: Exception) -> None:
        if isinstance(exc, (FrameError, errors.ProtocolError)):
            logger.error("client %r: bad data from the hub (%s); dropping the connection", self.name, exc)
        elif connection.alive and not self._closing.is_set():
            # ValueError: close() on another thread closed the socket under select().
            logger.info("client %r: connection lost: %s", self.name, exc)

    def _read_once(self, connection: _Connection, flags: int = 0) -> None:
        """One read from the socket, and every message it completes handled. Hold read_lock.

        Raises:
            _HubClosed: the hub closed the websocket.
            FrameError: the hub broke the framing rules (after the messages before the bad
                frame were handled).
            ProtocolError, OSError, ValueError: the connection is broken.
        """
        sock = connection.sock
        try:
            size = sock.recv_into(connection.buffer, 0, flags)
        except ssl.SSLWantReadError:
            return  # a partial TLS record: wait for the rest
        if not size:
            raise ConnectionError("the hub closed the connection")
        data = connection.view[:size].tobytes()
        if connection.tls and sock.pending():  # type: ignore[attr-defined]
            parts = [data]
            while sock.pending():  # type: ignore[attr-defined]
                parts.append(sock.recv(_READ_SIZE))
            data = b"".join(parts)
        connection.bytes_read += len(data)
        messages = connection.reader.feed(data)
        now = time.monotonic()
        protocol = connection.protocol
        for opcode, payload in messages:
            if not connection.alive:
                return  # dropped meanwhile (close(), a failed write): ignore the rest
            if opcode == OP_BINARY:
                frame = protocol.receive(payload, now)
                if type(frame) is Response:
                    self._on_response(frame)
                elif type(frame) is Request:
                    self._serve_request(connection, frame)
                elif type(frame) is Information:
                    self._on_information(frame)
                elif isinstance(frame, Failure):
                    self._on_failure(frame)
                elif isinstance(frame, Pong):
                    if frame.id:
                        self._settle(frame.id, True)
                elif isinstance(frame, Ping):
                    self._send(connection, protocol.pong(frame))
                elif isinstance(frame, Presence):
                    self.emit("on_winerp_peer_join" if frame.joined else "on_winerp_peer_leave", frame.name)
                elif isinstance(frame, Welcome):
                    reader = connection.reader
                    reader.max_size = max(reader.max_size, _receive_limit(frame.max_message_size))
                    assert self._start_future is not None
                    if self._welcomed(connection, frame, self._start_future):
                        connection.was_ready = True
                        if connection.guest is None:
                            self._lend(connection)
            elif opcode == OP_CLOSE:
                self._note_close(connection, payload)
                # Answer the hub's close, echoing its code as RFC 6455 section 5.5.1 suggests,
                # before the socket is shut.
                self._last_frame(connection, payload[:2])
                raise _HubClosed
            elif opcode == OP_PING:
                self._send(connection, payload, OP_PONG)
            elif opcode == OP_TEXT:
                raise errors.ProtocolError("the hub sent a text message on a native connection")
            # OP_PONG: nothing to do (the heartbeat is a protocol Ping, not a websocket one).
        if connection.reader.failure is not None:
            raise connection.reader.failure  # the messages before the bad frame went through

    def _welcomed(
        self, connection: _Connection, welcome: Welcome, start_future: concurrent.futures.Future[None]
    ) -> bool:
        first = not self._authorized
        self._authorized = True
        connection.welcomed = True
        self._state = connection.protocol.state
        if first:
            self.emit("on_winerp_connect")
        if welcome.on_hold:
            logger.warning("client name %r is taken; this client is on hold until it is free", self.name)
            _resolve(start_future)
            return False
        with self._lock:
            self._ready.set()
            waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            _resolve(waiter)
        _resolve(start_future)
        again = self._was_ever_ready
        self._was_ever_ready = True
        logger.info(
            "client %r: %s the hub at %s", self.name, "reconnected to" if again else "connected to", self._address()
        )
        self.emit("on_winerp_ready")
        return True

    def _note_close(self, connection: _Connection, data: bytes) -> None:
        code, reason = parse_close(data)
        if code is not None:
            connection.close_code = code
            connection.close_reason = reason
            if code != CloseCode.NORMAL:
                logger.warning(
                    "client %r: the hub closed the connection: %d %s",
                    self.name,
                    connection.close_code,
                    connection.close_reason,
                )

    def _drop(self, connection: _Connection) -> None:
        """End ``connection``: wake its reader, fail every pending call. Idempotent."""
        with self._lock:
            if not connection.alive:
                return
            connection.alive = False
            if self._connection is connection:
                self._connection = None
                self._ready.clear()
                if self._state is not ClientState.CLOSED:
                    self._state = ClientState.CONNECTING
        with connection.turn:
            connection.turn.notify_all()  # a standing-by reader thread sees the end at once
        try:
            connection.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        reason = "the client was closed" if self._closing.is_set() else "the connection to the hub dropped"
        self._fail_pending(errors.ConnectionLost(reason))
        if self._thread is threading.current_thread() or self._closing.is_set():
            try:
                connection.ws.shutdown()  # type: ignore[no-untyped-call]
            except Exception:  # noqa: BLE001
                pass

    def _fail_pending(self, error: errors.WinerpError) -> None:
        while self._pending:
            try:
                _, call = self._pending.popitem()
            except KeyError:
                break
            call.end(None, error)

    def _settle(self, request_id: int, value: Any) -> None:
        call = self._pending.pop(request_id, None)
        if call is not None:
            call.end(value, None)

    # A payload is the sending peer's, not the hub's: one that cannot be decoded (an unknown
    # extension type, nesting too deep for this side) ends that call or drops that inform,
    # never the connection, so a hostile or broken peer cannot disconnect the clients it
    # talks to.

    def _on_response(self, response: Response) -> None:
        call = self._pending.pop(response.id, None)
        if call is not None:  # a late answer (the call timed out) is not even decoded
            try:
                value = decode_value(response.result)
            except errors.ProtocolError as exc:
                call.end(None, errors.ProtocolError(f"the answer of {response.peer!r} is not readable: {exc}"))
            else:
                call.end(value, None)
        if "on_winerp_response" in self.events:
            self.emit("on_winerp_response")

    def _on_information(self, information: Information) -> None:
        try:
            data = decode_value(information.data)
        except errors.ProtocolError as exc:
            logger.warning("client %r: dropped an inform from %r: %s", self.name, information.source, exc)
            return
        self.emit("on_winerp_information", data, information.source)

    def _on_failure(self, failure: Failure) -> None:
        if failure.id == 0:
            logger.warning("client %r: an inform was not delivered: %s", self.name, failure.message)
            return
        call = self._pending.pop(failure.id, None)
        if call is not None:
            call.end(None, error_from_failure(failure))

    def _serve_request(self, connection: _Connection, request: Request) -> None:
        handler = self.routes.get(request.route)
        if handler is None:
            self._send(connection, connection.protocol.route_not_found(request))
            return
        try:
            kwargs = decode_value(request.args)
            if not isinstance(kwargs, dict):
                raise errors.ProtocolError("request arguments are not a mapping")
        except errors.ProtocolError as exc:
            self._send(connection, connection.protocol.fail(request, exc, ""))
            return
        if "on_winerp_request" in self.events:
            self.emit("on_winerp_request", request.peer, request.route)

        def finish(value: Any, error: BaseException | None) -> None:
            current = self._connection
            if current is not connection or not connection.alive:
                return  # the caller's request already failed with the connection
            if error is None:
                frame = connection.protocol.respond(request, value)
            else:
                text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
                frame = connection.protocol.fail(request, error, text)
                self.emit("on_winerp_error", error)
            self._send(connection, frame)

        self._hooks.run_route(handler, request.peer, kwargs, finish)


class _PingCall(Call):
    """A ping: ends with True when answered, False when the peer is not there (or left)."""

    __slots__ = ()

    def end(self, value: Any, error: BaseException | None) -> None:
        if isinstance(error, (errors.DestinationNotFound, errors.PeerDisconnected)):
            super().end(False, None)
        elif error is not None:
            super().end(None, error)
        else:
            super().end(True, None)


class _PeersCall(Call):
    """The hub's ``peers``: ends with a list of names, or a dict of names to routes."""

    __slots__ = ("routes",)

    def __init__(self, request_id: int, listener: Callable[[Call], None], routes: bool) -> None:
        super().__init__(request_id, listener)
        self.routes = routes

    def end(self, value: Any, error: BaseException | None) -> None:
        if error is not None:
            super().end(None, error)
        elif self.routes and not isinstance(value, dict):
            # A hub that ignores the option answers with names only: say so, do not guess.
            super().end(None, errors.ProtocolError("this hub does not list its clients' routes (an older hub)"))
        elif self.routes:
            super().end({name: list(routes or ()) for name, routes in value.items()}, None)
        else:
            super().end(list(value), None)
