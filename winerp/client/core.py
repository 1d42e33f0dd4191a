"""The client core: reconnects, calls in flight and events, for both facades.

Everything that does not depend on *how* a caller waits lives here, once. One thread per
client, ``winerp-reader-<name>``, connects (`winerp.client.opening`), registers, serves each
`winerp.client.connection.Connection` until it ends, and reconnects per the policy. The
connection owns the socket, the writer, the reader seat and the closing; it hands every
frame it reads to `ClientCore.frame_received`, here. Nothing here blocks a caller on the
network: a request returns a `winerp.client.calls.Call` with its timeout, which tells the
listener the facade gave it when it ends; the facades decide how to wait for that (and
call `ClientCore.expire` when the timeout has passed), and where user handlers and event
handlers run (the `Hooks` they pass in).
"""

from __future__ import annotations

import concurrent.futures
import enum
import itertools
import logging
import os
import ssl
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from .. import errors
from ..protocol.client import ClientProtocol, error_from_failure
from ..protocol.frames import (
    HUB,
    Failure,
    Frame,
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
from .calls import Call, CallTable, Deadline, Gathering, PeersCall, PingCall, resolve, timed_out
from .connection import NOT_REGISTERED, Connection, ConnectionState
from .events import Events, Hooks
from .opening import MIN_STEP, Backoff, HubAddresses, address, open_websocket

__all__ = ["ClientCore", "Life"]

# Named for what it logs, not for the module path: a stable name for users to configure.
logger = logging.getLogger("winerp.client")

# Longest one connection attempt (TCP, TLS, the websocket handshake and the registration)
# may take when `start` set no deadline; the hub gives a new connection as long.
_ATTEMPT_TIMEOUT = 10.0
_NO_DEADLINE = Deadline(None)


class Life(enum.Enum):
    """Where a client stands as a whole (a connection has its own `ConnectionState`)."""

    NEW = "new"  # made; start() not called yet
    RUNNING = "running"  # its thread connects, serves and reconnects
    GAVE_UP = "gave up"  # its thread ended: start's deadline, a refused token, a drop with reconnect off
    CLOSED = "closed"  # close() was called
    FORKED = "forked"  # the copy in a forked child: the connection is the parent's


# Every client core of this process, so that a forked child can disown them all.
_cores: weakref.WeakSet[ClientCore] = weakref.WeakSet()


def _disown_after_fork() -> None:
    """In a forked child: mark every client of the parent as the parent's (see `ClientCore.disown`)."""
    for core in list(_cores):
        core.disown()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_disown_after_fork)


class ClientCore:
    """The machinery shared by `winerp.sync.Client` and `winerp.aio.Client`.

    Thread-safe: every public method may be called from any thread, and none blocks on
    the network. The lock order is written in `winerp.client.connection`.

    Args:
        name: The client's unique name on the hub.
        host: Hub address.
        port: Hub port.
        hooks: Where user handlers run (the facade's private `winerp.client.base.FacadeHooks`).
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
        hooks: Hooks,
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
        self.hubs = HubAddresses((host, port, ssl_context), hubs)
        self.host, self.port, self.ssl_context = self.hubs.current
        self.token = token if token is not None else (os.environ.get("WINERP_TOKEN") or None)
        self.reconnect = reconnect
        self.max_message_size = max_message_size
        self.backoff = backoff or Backoff()
        self.routes: dict[str, Callable[..., Any]] = {}
        self.events = Events(hooks)
        self._hooks = hooks
        self._lock = threading.Lock()
        # Wakes the thread's pause between attempts when the client is closed.
        self._life_changed = threading.Condition(self._lock)
        self._life = Life.NEW
        self._calls = CallTable()
        # The requests being served now (their `finish`); set.add and discard are atomic.
        self._serving: set[Callable[[Any, BaseException | None], None]] = set()
        self._connection: Connection | None = None
        self._ready_waiters: list[concurrent.futures.Future[None]] = []
        self._thread: threading.Thread | None = None
        self._start_future: concurrent.futures.Future[None] | None = None
        # One request-id counter for every connection of this client: the call table is
        # keyed by id across reconnects, so an id must never come back (see ClientProtocol).
        self._request_ids = itertools.count(1)
        # The error that made this client give up for good (start's deadline, a refused
        # token, a drop with reconnect off, close()); wait_until_ready raises it at once.
        self._given_up: errors.WinerpError | None = None
        self._ready_before = False  # for the log: "reconnected" rather than "connected"
        _cores.add(self)

    # state

    @property
    def is_ready(self) -> bool:
        """True while connected, registered and not on hold."""
        connection = self._connection
        return connection is not None and connection.state is ConnectionState.READY

    @property
    def on_hold(self) -> bool:
        """True while another client holds this name and this one waits for it."""
        connection = self._connection
        return connection is not None and connection.state is ConnectionState.HELD

    @property
    def authorized(self) -> bool:
        """True while the hub has this client registered (ready or on hold)."""
        connection = self._connection
        return connection is not None and connection.state in (ConnectionState.READY, ConnectionState.HELD)

    @property
    def forked(self) -> bool:
        """True in a forked child process: the client belongs to the parent and refuses every call."""
        return self._life is Life.FORKED

    def ready_future(self) -> concurrent.futures.Future[None]:
        """A future that ends when the client is next ready (at once if it is now).

        It ends with the error that made the client give up, at once if it has; a client
        not started yet is waited for (``create_task(start())`` then ``wait_until_ready()``).
        """
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        if self.forked:
            future.set_exception(self._fork_error())
            return future
        with self._lock:
            if self.is_ready:
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
        with self._lock:
            if self._life is Life.FORKED:
                raise self._fork_error()
            if self._life is Life.CLOSED:
                raise errors.ClientNotReadyError("this client was closed; make a new one")
            if self._start_future is not None:
                return self._start_future
            self._life = Life.RUNNING
            self._start_future = concurrent.futures.Future()
            self._thread = threading.Thread(
                target=self._run, args=(Deadline(timeout),), name=f"winerp-reader-{self.name}", daemon=True
            )
            self._thread.start()
            return self._start_future

    def close(self) -> None:
        """Leave the hub; calls in flight fail with `ConnectionLost`. Idempotent.

        In a forked child it only marks the client closed: the connection is the parent's.
        """
        closed = errors.ClientNotReadyError(f"client {self.name!r} was closed")
        with self._lock:
            if self._given_up is None:
                self._given_up = closed
            if self._life is Life.FORKED:
                return
            self._life = Life.CLOSED
            self._life_changed.notify_all()
            connection = self._connection
        if connection is not None:
            connection.close_with(CloseCode.NORMAL, "client closing")
            connection.release()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)
        if self._start_future is not None:
            resolve(self._start_future, error=errors.ClientNotReadyError("the client was closed while starting"))
        self._calls.fail_all(errors.ConnectionLost("the client was closed"))
        self._give_up(closed)

    def _give_up(self, error: errors.WinerpError) -> None:
        """The client is done for good: whoever waits for it to be ready gets ``error`` (or the earlier one)."""
        with self._lock:
            if self._life is Life.RUNNING:
                self._life = Life.GAVE_UP
            if self._given_up is None:
                self._given_up = error
            error = self._given_up
            waiters, self._ready_waiters = self._ready_waiters, []
        if self._start_future is not None:
            resolve(self._start_future, error=error)
        for waiter in waiters:
            resolve(waiter, error=error)

    def _fork_error(self) -> errors.ClientNotReadyError:
        return errors.ClientNotReadyError(
            f"client {self.name!r} belongs to the process that started it, not to this forked child "
            f"(e.g. a gunicorn worker under --preload, or multiprocessing with fork): "
            f"start a client in each worker"
        )

    def disown(self) -> None:
        """In a forked child: disown the parent's connection (see `_disown_after_fork`).

        Nothing is written to or shut on the inherited socket, which the parent still uses;
        every call raises at once. The locks are made anew: a thread of the parent may have
        held one at the fork, and that thread does not exist here to release it.
        """
        self._lock = threading.Lock()
        self._life_changed = threading.Condition(self._lock)
        self._life = Life.FORKED
        self._connection = None
        self._ready_waiters = []
        self._calls = CallTable()
        self._serving = set()

    # routes and events

    def add_route(self, name: str, handler: Callable[..., Any]) -> None:
        """Register a route; tells the hub at once when connected."""
        with self._lock:
            if name in self.routes:
                raise ValueError(f"route {name!r} is already registered")
            self.routes[name] = handler
            connection = self._connection
            # Before the Hello is out, the Hello itself carries the route (see `_register`).
            announce = connection is not None and connection.state in _REGISTERED
        if announce:
            assert connection is not None
            connection.writer.send(connection.protocol.add_routes([name]))

    def add_event(self, name: str, handler: Callable[..., Any]) -> None:
        """Register an event handler under its event name. Raises `NameError` for unknown names."""
        self.events.add(name, handler)

    def emit(self, name: str, *args: Any) -> None:
        """Hand an event to its handlers (through the facade)."""
        self.events.emit(name, *args)

    # calls

    def request(
        self,
        destination: str,
        route: str,
        kwargs: dict[str, Any],
        listener: Callable[[Call], None],
        timeout: float = 60.0,
        *,
        unattended: bool = False,
    ) -> Call:
        """Send a request; ``listener(call)`` runs once it ends, with the answer or the error.

        The listener may run on any thread, before this returns too (a connection that
        dropped meanwhile); it must not block. ``timeout`` is how long the caller waits
        (see `expire`). ``unattended``: nobody waits (``submit``), so the call ends by
        itself with `RequestTimeout` at the connection thread's first tick after
        ``timeout`` (ticks come every quarter of the hub's heartbeat).

        Raises:
            ClientNotReadyError: not connected, not registered, or on hold.
            TypeError: an argument cannot be encoded.
            PayloadTooLarge: the request exceeds the size limit.
        """
        connection = self._live()
        request_id, frame = connection.protocol.request(destination, route, kwargs)
        call = Call(request_id, listener, timeout)
        if unattended:
            call.deadline = time.monotonic() + timeout
        return self._track(connection, call, frame)

    def ping(self, destination: str | None, listener: Callable[[Call], None], timeout: float) -> Call:
        """Ping the hub (``destination=None``) or a client; the call ends with True or False."""
        connection = self._live()
        request_id, frame = connection.protocol.ping(HUB if destination is None else destination)
        return self._track(connection, PingCall(request_id, listener, timeout), frame)

    def inform(self, data: Any, destinations: list[str]) -> None:
        """Send ``data`` to ``destinations`` (everyone else when empty); fire and forget.

        Raises:
            ClientNotReadyError: not connected, not registered, or on hold.
            TypeError: the data cannot be encoded.
            PayloadTooLarge: the message exceeds the size limit.
        """
        connection = self._live()
        connection.writer.send_soon(connection.protocol.inform(data, destinations), fire_and_forget=True)

    def call_hub(
        self, route: str, args: dict[str, Any] | None, listener: Callable[[Call], None], timeout: float
    ) -> Call:
        """Call one of the hub's own routes (``peers``, ``routes``, ``status``)."""
        return self.request(HUB, route, args or {}, listener, timeout)

    def peers(self, routes: bool, listener: Callable[[Call], None], timeout: float) -> Call:
        """Ask the hub for the other ready clients: sorted names, or ``{name: sorted routes}``."""
        connection = self._live()
        request_id, frame = connection.protocol.request(HUB, "peers", {"routes": True} if routes else {})
        return self._track(connection, PeersCall(request_id, listener, timeout, routes), frame)

    def request_many(
        self, route: str, destinations: Iterable[str] | None, kwargs: dict[str, Any], timeout: float
    ) -> Gathering:
        """Call ``route`` on several clients at once (every one that has it when ``destinations`` is None)."""
        gathering = Gathering(self._calls, timeout)

        def launch(names: list[str]) -> None:
            for name in names:
                try:
                    gathering.add(name, self.request(name, route, kwargs, gathering.listener(name), timeout))
                except errors.WinerpError as exc:
                    gathering.record(name, exc)
            gathering.expect(len(names))

        if destinations is not None:
            self._live()
            launch(list(dict.fromkeys(destinations)))
            return gathering

        def looked_up(lookup: Call) -> None:
            if lookup.error is not None:
                gathering.fail(lookup.error)
            else:
                launch(lookup.value)

        self.call_hub("routes", {"route": route}, looked_up, timeout)
        return gathering

    def expire(self, call: Call) -> None:
        """End ``call`` with `RequestTimeout` (its caller waited its timeout) unless it has ended already."""
        self._calls.end(call, None, timed_out(call.timeout))

    def forget(self, call: Call) -> None:
        """Drop ``call`` (its waiter gave up); a late answer is ignored, the listener not told."""
        self._calls.take(call.id)

    def _live(self) -> Connection:
        connection = self._connection
        if connection is None or connection.state is not ConnectionState.READY:
            if self.forked:
                raise self._fork_error()
            if connection is not None and connection.state is ConnectionState.HELD:
                raise errors.ClientNotReadyError(f"client {self.name!r} is on hold: another client holds the name")
            raise errors.ClientNotReadyError(f"client {self.name!r} is not ready (not started, or disconnected)")
        return connection

    def _track(self, connection: Connection, call: Call, frame: bytes) -> Call:
        self._calls.add(call)
        if connection.state is ConnectionState.CLOSED:
            # The connection closed after _live(), and may have failed its calls before this
            # one was in the table: fail it now rather than never.
            self._calls.end(call, None, errors.ConnectionLost("the connection to the hub dropped"))
        else:
            # With other calls in flight (e.g. many tasks awaiting at once) requests may leave
            # together; a lone one goes at once.
            connection.writer.send_soon(frame, crowded=len(self._calls) > 1)
        return call

    # the reader thread: connect, serve, reconnect

    def _run(self, start: Deadline) -> None:
        """The client's thread: connect, serve, reconnect per the policy, until the client gives up.

        Whatever happens, it ends by telling every waiter why (`_give_up`): no thread of a
        client ends silently.
        """
        try:
            error = self._keep_connected(start)
        except Exception as exc:  # a bug: logged with its traceback, and the client gives up visibly
            logger.exception("client %r: the reader thread failed", self.name)
            error = errors.ConnectionLost(f"the client failed: {exc!r}")
        self._give_up(error)

    def _starting(self, start: Deadline) -> Deadline:
        """``start``'s deadline while `start` waits, none once it has returned."""
        assert self._start_future is not None
        return _NO_DEADLINE if self._start_future.done() else start

    def _keep_connected(self, start: Deadline) -> errors.WinerpError:
        """Connection attempts one after another, per the policy; return the error that ends them."""
        while self._life is Life.RUNNING:
            bound = self._starting(start)
            connection, failure = self._attempt(bound.within(_ATTEMPT_TIMEOUT, MIN_STEP))
            if self._life is not Life.RUNNING:
                break
            if connection is not None and failure is None:
                self._log_lost(connection)
                if not self.reconnect:
                    return errors.ConnectionLost("the connection to the hub dropped (reconnect is off)")
                delay = 0.05 if connection.close_code == CloseCode.GOING_AWAY else self.backoff.next_delay()
                delay = self.hubs.after_drop(delay)
                self.host, self.port, self.ssl_context = self.hubs.current
                logger.info("client %r: reconnecting in %.1f s to %s", self.name, delay, self._address())
            else:
                assert failure is not None
                if self._gives_up(failure, bound):
                    logger.info("client %r: gave up connecting to %s: %s", self.name, self._address(), failure)
                    return failure
                tried = self._address()
                delay = self.hubs.after_failure(self.backoff)
                self.host, self.port, self.ssl_context = self.hubs.current
                logger.warning(
                    "client %r: cannot connect to the hub at %s: %s; next attempt in %.1f s",
                    self.name,
                    tried,
                    failure,
                    delay,
                )
            self._pause(self._starting(start).remaining(delay))
        return errors.ClientNotReadyError(f"client {self.name!r} was closed")

    def _gives_up(self, failure: errors.WinerpError, bound: Deadline) -> bool:
        """After a failed attempt: True when the client stops trying."""
        if isinstance(failure, errors.UnauthorizedError):
            logger.error("the hub refused client %r: %s", self.name, failure)
            return True  # a wrong token stays wrong
        if isinstance(failure, errors.ProtocolError) or not self.reconnect:
            return True  # a protocol error would only repeat
        return bound.passed()

    def _pause(self, delay: float) -> None:
        with self._life_changed:
            self._life_changed.wait_for(lambda: self._life is not Life.RUNNING, delay)

    def _attempt(self, deadline: Deadline) -> tuple[Connection | None, errors.WinerpError | None]:
        """One connection: open it, register, serve it until it ends.

        Returns the connection (None if none opened) and, unless the hub welcomed this
        client on it, why not.
        """
        try:
            ws = open_websocket(self.name, self.host, self.port, self.ssl_context, self.token, deadline)
        except (errors.HubUnreachable, errors.RequestTimeout, errors.ProtocolError, errors.UnauthorizedError) as exc:
            return None, exc
        except Exception as exc:  # a bug: logged with its traceback, then retried as any failed attempt
            logger.exception("client %r: connecting failed unexpectedly", self.name)
            return None, errors.HubUnreachable(f"connecting failed: {exc!r}")
        protocol = ClientProtocol(self.name, self.max_message_size, time.monotonic(), self._request_ids)
        connection = Connection(self.name, ws, protocol, self)
        try:
            if self._register(connection):
                connection.serve(deadline)
        except Exception as exc:  # noqa: BLE001 - a bug: logged by abort; costs this connection only
            connection.abort(exc)
        finally:
            connection.close()
            connection.release()
        if connection.welcomed:
            self.emit("on_winerp_disconnect")
            self.backoff.reset()
            return connection, None
        return connection, self._refusal(connection)

    def _refusal(self, connection: Connection) -> errors.WinerpError:
        """Why the hub did not welcome this client on ``connection``."""
        if connection.lost == NOT_REGISTERED:
            return errors.RequestTimeout(f"the hub at {self._address()} did not register client {self.name!r} in time")
        why = f": {connection.close_code} {connection.close_reason}" if connection.close_code else ""
        refused = connection.close_code == CloseCode.PROTOCOL_ERROR
        return (errors.ProtocolError if refused else errors.ConnectionLost)(
            f"the hub closed the connection before this client was ready{why}"
        )

    def _register(self, connection: Connection) -> bool:
        """Make ``connection`` the client's and send the Hello; False if the client was closed meanwhile."""
        protocol = connection.protocol
        with self._lock:
            if self._life is not Life.RUNNING:
                return False
            self._connection = connection
            hello = protocol.hello(self.routes)
            announced = set(self.routes)
        connection.writer.send(hello)
        with self._lock:
            # From now on add_route sends each new route itself (after the Hello); the
            # routes added while the Hello was being built and sent go here.
            connection.hello_sent()
            late = [name for name in self.routes if name not in announced]
        if late:
            connection.writer.send(protocol.add_routes(late))
        return True

    def _log_lost(self, connection: Connection) -> None:
        if connection.close_code is not None:
            why = f"closed by the hub: {connection.close_code} {connection.close_reason}".rstrip()
        else:
            why = connection.lost or "the connection dropped"
        logger.warning("client %r: lost the connection to the hub at %s (%s)", self.name, self._address(), why)

    def _address(self) -> str:
        return address(self.host, self.port)

    # what a connection tells the core (`winerp.client.connection.Owner`)

    def frame_received(self, connection: Connection, frame: Frame) -> None:
        """A frame from the hub, on the thread that read it (the seat is taken)."""
        kind = type(frame)
        if kind is Response:
            self._on_response(frame)  # type: ignore[arg-type]
        elif kind is Request:
            self._serve_request(connection, frame)  # type: ignore[arg-type]
        elif kind is Information:
            self._on_information(frame)  # type: ignore[arg-type]
        elif isinstance(frame, Failure):
            self._on_failure(frame)
        elif isinstance(frame, Pong):
            if frame.id:
                call = self._calls.take(frame.id)
                if call is not None:
                    call.end(True, None)
        elif isinstance(frame, Ping):
            connection.writer.send(connection.protocol.pong(frame))
        elif isinstance(frame, Presence):
            self.emit("on_winerp_peer_join" if frame.joined else "on_winerp_peer_leave", frame.name)
        elif isinstance(frame, Welcome):
            self._welcomed(connection, frame)

    def connection_closed(self, connection: Connection) -> None:
        """``connection`` ended: it is no longer the client's, and its calls fail."""
        with self._lock:
            if self._connection is connection:
                self._connection = None
            closing = self._life is Life.CLOSED
        reason = "the client was closed" if closing else "the connection to the hub dropped"
        self._calls.fail_all(errors.ConnectionLost(reason))

    def tick(self, now: float) -> None:
        """The connection thread's tick: end the calls nobody waits on whose time is up."""
        self._calls.expire_due(now)

    def _welcomed(self, connection: Connection, welcome: Welcome) -> None:
        first = not connection.welcomed
        with self._lock:
            if not connection.welcome(welcome):
                return
            ready = connection.state is ConnectionState.READY
            waiters: list[concurrent.futures.Future[None]] = []
            if ready:
                waiters, self._ready_waiters = self._ready_waiters, []
        assert self._start_future is not None
        if first:
            self.emit("on_winerp_connect")
        if not ready:
            logger.warning("client name %r is taken; this client is on hold until it is free", self.name)
            resolve(self._start_future)
            return
        for waiter in waiters:
            resolve(waiter)
        resolve(self._start_future)
        again, self._ready_before = self._ready_before, True
        verb = "reconnected to" if again else "connected to"
        logger.info("client %r: %s the hub at %s", self.name, verb, self._address())
        self.emit("on_winerp_ready")
        connection.lend(self._hooks.lend_reader)
        connection.writer.batch_writes(self._hooks.batch_writes())

    # A payload is the sending peer's, not the hub's: one that cannot be decoded (an unknown
    # extension type, nesting too deep for this side) ends that call or drops that inform,
    # never the connection, so a hostile or broken peer cannot disconnect the clients it
    # talks to.

    def _on_response(self, response: Response) -> None:
        call = self._calls.take(response.id)
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
        self.events.emit("on_winerp_information", data, information.source)

    def _on_failure(self, failure: Failure) -> None:
        if failure.id == 0:
            logger.warning("client %r: an inform was not delivered: %s", self.name, failure.message)
            return
        call = self._calls.take(failure.id)
        if call is not None:
            call.end(None, error_from_failure(failure))

    def _serve_request(self, connection: Connection, request: Request) -> None:
        handler = self.routes.get(request.route)
        if handler is None:
            connection.writer.send(connection.protocol.route_not_found(request))
            return
        try:
            kwargs = decode_value(request.args)
            if not isinstance(kwargs, dict):
                raise errors.ProtocolError("request arguments are not a mapping")
        except errors.ProtocolError as exc:
            connection.writer.send(connection.protocol.fail(request, exc, ""))
            return
        caller = request.peer  # on a request coming in, the frame's peer is its caller
        if "on_winerp_request" in self.events:
            self.emit("on_winerp_request", caller, request.route)
        serving = self._serving

        def finish(value: Any, error: BaseException | None) -> None:
            serving.discard(finish)
            if self._connection is not connection or connection.state is ConnectionState.CLOSED:
                return  # the caller's request already failed with the connection
            if error is None:
                frame = connection.protocol.respond(request, value)
            else:
                text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
                frame = connection.protocol.fail(request, error, text)
                self.emit("on_winerp_error", error)
            # With other requests being served, their answers may leave with this one.
            connection.writer.send_soon(frame, crowded=bool(serving))

        serving.add(finish)
        self._hooks.run_route(handler, caller, kwargs, finish)


_REGISTERED = (ConnectionState.REGISTERING, ConnectionState.HELD, ConnectionState.READY)
