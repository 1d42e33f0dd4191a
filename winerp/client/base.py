"""What the sync and aio clients share: construction, state, routes and events.

`BaseClient` holds everything that does not wait. The two facades subclass it and add
only the methods that wait (blocking, or awaitable) and the hooks that decide where user
handlers run; those reach the core through a private `FacadeHooks`, so they are no part of
a client's public methods.
"""

from __future__ import annotations

import functools
import inspect
import logging
import queue
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, overload

from .. import errors
from ..defaults import DEFAULT_HOST, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PORT
from .core import ClientCore
from .events import Hooks, LoopTurns
from .opening import Backoff

__all__ = [
    "BaseClient",
    "FacadeHooks",
    "WorkerPools",
    "Workers",
    "destinations_list",
    "call_route",
    "call_event",
    "is_async_callable",
]

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("winerp.client")


def call_route(
    handler: Callable[..., Any],
    source: str,
    kwargs: dict[str, Any],
    finish: Callable[[Any, BaseException | None], None],
) -> None:
    """Run a plain route handler and report its outcome to ``finish``."""
    try:
        value = handler(source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported to the caller
        finish(None, exc)
    else:
        finish(value, None)


def call_event(handler: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Run a plain event handler; what it raises is logged, never lost silently."""
    try:
        handler(*args)
    except Exception:
        logger.exception("event handler %r raised", getattr(handler, "__name__", handler))


def is_async_callable(handler: object) -> bool:
    """True when calling ``handler`` gives a coroutine or an async generator, not a value.

    Sees through `functools.partial` and bound methods, and looks at the ``__call__`` of
    a callable object.
    """
    while isinstance(handler, functools.partial):
        handler = handler.func
    if inspect.iscoroutinefunction(handler) or inspect.isasyncgenfunction(handler):
        return True
    if inspect.isroutine(handler) or inspect.isclass(handler):
        return False
    call = getattr(type(handler), "__call__", None)  # noqa: B004 - the method itself is wanted, not callable()
    return inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call)


def _takes_timeout(handler: Callable[..., Any]) -> bool:
    """True when ``handler`` has a parameter named ``timeout`` that only a keyword could fill."""
    try:
        parameters = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):  # no signature to read (some builtins): nothing to say
        return False
    for index, parameter in enumerate(parameters):
        if parameter.name != "timeout":
            continue
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            return True
        # The first positional parameter receives the caller's name, whatever it is called.
        if parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and index > 0:
            return True
    return False


def _handler_name(handler: Callable[..., Any]) -> str:
    """The route name a handler registered without one gets: its ``__name__``."""
    name = getattr(handler, "__name__", None)
    if not isinstance(name, str):
        # e.g. a functools.partial or a callable object: say how to name it.
        raise TypeError(f"a {type(handler).__name__} has no __name__: register it as route('some_name')(handler)")
    return name


class FacadeHooks:
    """The `Hooks` a facade lends the core: where its route and event handlers run.

    A separate object, so that the hooks stay private to the facades (they are not the
    client's own methods); it holds the bound methods themselves, so the core calls them
    with no extra hop.
    """

    __slots__ = ("batch_writes", "lend_reader", "run_event", "run_route")

    def __init__(
        self,
        run_route: Callable[
            [Callable[..., Any], str, dict[str, Any], Callable[[Any, BaseException | None], None]], None
        ],
        run_event: Callable[[Callable[..., Any], tuple[Any, ...]], None],
        lend_reader: Callable[[int, Callable[[], bool]], Callable[[], bool] | None],
        batch_writes: Callable[[], LoopTurns | None],
    ) -> None:
        self.run_route = run_route
        self.run_event = run_event
        self.lend_reader = lend_reader
        self.batch_writes = batch_writes


class Workers:
    """Up to ``size`` threads running submitted calls, started as the work needs them.

    Lighter than `concurrent.futures.ThreadPoolExecutor` (no future, no semaphore per
    call): a route handler is one queue put away from a worker. Calls taken in the order
    submitted; with ``size`` 1, also run in that order. Thread-safe.
    """

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False
        # Every thread started: nothing more to decide, so a call is only a queue put (no
        # lock, no idle count on either side). The event thread is there after its first call.
        self._full = False

    def submit(self, function: Callable[..., None], *args: Any) -> None:
        """Queue ``function(*args)``; ignored once shut down (a call racing `shutdown` may be dropped)."""
        if self._full:
            if not self._closed:
                self._queue.put((function, args))
            return
        with self._lock:
            if self._closed:
                return
            if self._idle:
                # An idle worker is claimed for this call here, under the lock: counting
                # idle workers from the workers' side instead leaves a window in which a
                # worker that just took a call still counts as idle, and a call can then
                # wait behind a long handler while the pool could still grow.
                self._idle -= 1
            elif len(self._threads) < self._size:
                thread = threading.Thread(target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
                self._full = len(self._threads) >= self._size
            self._queue.put((function, args))

    def shutdown(self, *, wait: bool, cancel: bool) -> None:
        """Stop the threads once the queue is done (``cancel``: drop what has not started)."""
        with self._lock:
            self._closed = True
            if cancel:
                while True:
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        break
            for _ in self._threads:
                self._queue.put(None)
            threads = list(self._threads)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            function, args = item
            try:
                function(*args)
            except BaseException:  # the calls catch what user code raises; this is a last resort
                logger.exception("a worker of %s failed", self._name)
            if not self._full:
                with self._lock:
                    self._idle += 1


class WorkerPools:
    """A client's worker threads: a pool for route handlers and one ordered event thread.

    Created on first use, shut down once by `close`; after that no new work is accepted.
    Thread-safe.
    """

    def __init__(self, name: str, handler_workers: int) -> None:
        self._name = name
        self._handler_workers = handler_workers
        self._lock = threading.Lock()
        self._handlers: Workers | None = None
        self._events: Workers | None = None
        self.closed = False

    def handlers(self) -> Workers | None:
        """The route handler pool, or None once closed."""
        pool = self._handlers
        if pool is None:
            with self._lock:
                if self._handlers is None and not self.closed:
                    self._handlers = Workers(self._handler_workers, f"winerp-handler-{self._name}")
                pool = self._handlers
        return pool

    def events(self) -> Workers | None:
        """The single event thread (so events run in order), or None once closed."""
        pool = self._events
        if pool is None:
            with self._lock:
                if self._events is None and not self.closed:
                    self._events = Workers(1, f"winerp-event-{self._name}")
                pool = self._events
        return pool

    def close(self) -> Callable[[], None]:
        """Accept no more work; return the call that joins the threads (run it where blocking is fine)."""
        with self._lock:
            self.closed = True
            handlers, events = self._handlers, self._events
            self._handlers = self._events = None
        own = threading.current_thread().name.startswith((f"winerp-handler-{self._name}", f"winerp-event-{self._name}"))

        def join() -> None:
            # Handlers not yet started are dropped (their callers fail with the connection);
            # queued events still run. A worker closing its own client must not wait for itself.
            if handlers is not None:
                handlers.shutdown(wait=not own, cancel=True)
            if events is not None:
                events.shutdown(wait=not own, cancel=False)

        return join


def destinations_list(destinations: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Normalise `inform`'s ``destinations``: one name, several, or everyone (empty)."""
    if destinations is None:
        return []
    if isinstance(destinations, str):
        return [destinations]
    return list(destinations)


class BaseClient:
    """State, routes and events of a winerp client; subclassed by the sync and aio clients.

    Args:
        local_name: This client's unique name on the hub.
        host: Hub address.
        port: Hub port.
        reconnect: Come back by itself after the connection drops (backoff with jitter).
        token: Shared secret the hub requires; defaults to ``$WINERP_TOKEN``.
        ssl_context: Connect with TLS (``wss://``) using this client-side context.
        max_message_size: Largest message this client sends (the hub may announce a
            smaller one).
        backoff_initial: First reconnect delay, in seconds.
        backoff_max: Cap on the reconnect delay, in seconds.
        handler_workers: Most plain route handlers running at once.
        hubs: Several hub addresses (``host:port``, ``ws://host:port``, ``wss://host:port``)
            instead of ``host`` and ``port``, e.g. the hubs of a cluster: the client connects
            to the first that answers and, when its hub goes away, to the next one that does,
            with its name and routes.
    """

    def __init__(
        self,
        local_name: str,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        reconnect: bool = True,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        backoff_initial: float = 0.1,
        backoff_max: float = 3.0,
        handler_workers: int = 32,
        hubs: Sequence[str] | None = None,
    ) -> None:
        hooks: Hooks = FacadeHooks(self._run_route, self._run_event, self._lend_reader, self._batch_writes)
        self._core = ClientCore(
            local_name,
            host,
            port,
            hooks,
            token=token,
            ssl_context=ssl_context,
            reconnect=reconnect,
            max_message_size=max_message_size,
            backoff=Backoff(backoff_initial, backoff_max),
            hubs=hubs,
        )
        self._workers = WorkerPools(local_name, handler_workers)

    def __repr__(self) -> str:
        state = "ready" if self.is_ready else "on hold" if self.on_hold else "not ready"
        return f"<{type(self).__module__}.{type(self).__name__} {self.name!r} {state}>"

    @property
    def name(self) -> str:
        """This client's name on the hub."""
        return self._core.name

    @property
    def local_name(self) -> str:
        """This client's name on the hub (the winerp 1.x spelling of `name`)."""
        return self._core.name

    @property
    def is_ready(self) -> bool:
        """True while requests can be sent and received."""
        return self._core.is_ready

    @property
    def authorized(self) -> bool:
        """True once the hub has accepted this client."""
        return self._core.authorized

    @property
    def on_hold(self) -> bool:
        """True while another client holds this name; this one takes over when it leaves."""
        return self._core.on_hold

    @overload
    def route(self, name_or_handler: F) -> F: ...

    @overload
    def route(self, name_or_handler: str | None = None) -> Callable[[F], F]: ...

    def route(self, name_or_handler: str | Callable[..., Any] | None = None) -> Any:
        """Register a route handler, as a decorator or a plain call.

        ``@client.route``, ``@client.route()``, ``@client.route("alias")`` and
        ``client.route(func)`` all work. The handler is called as ``handler(source, **kwargs)``
        where ``source`` is the caller's name; the decorated function stays callable as is.
        Routes may be added before or after `start`. Thread-safe.

        Raises:
            ValueError: a route of that name already exists.
            InvalidRouteType: the handler is not callable.
        """
        if callable(name_or_handler):
            return self._add_route(_handler_name(name_or_handler), name_or_handler)
        if name_or_handler is not None and not isinstance(name_or_handler, str):
            raise errors.InvalidRouteType(f"a route handler must be callable, not {type(name_or_handler).__name__}")
        alias = name_or_handler

        def decorator(handler: F) -> F:
            if not callable(handler):
                raise errors.InvalidRouteType(f"a route handler must be callable, not {type(handler).__name__}")
            return self._add_route(alias or _handler_name(handler), handler)

        return decorator

    def _add_route(self, name: str, handler: F) -> F:
        self._check_handler(handler, f"route {name!r}")
        if _takes_timeout(handler):
            raise ValueError(
                f"route {name!r}: a handler parameter cannot be named 'timeout': request() takes "
                "timeout itself, so no caller could pass it; give the parameter another name"
            )
        self._core.add_route(name, handler)
        return handler

    def event(self, handler: F) -> F:
        """Register an event handler, named after the event (``on_winerp_ready`` ...).

        Handlers may take fewer parameters than the event passes (winerp 1.x handlers took
        none).

        Raises:
            NameError: no event has that name.
            TypeError: a coroutine function given to the sync client.
        """
        self._check_handler(handler, f"event handler {handler.__name__!r}")
        self._core.add_event(handler.__name__, handler)
        return handler

    # What the facades provide. A facade whose handlers must be plain functions says so:
    # the check runs at registration, where the mistake was made.
    _accepts_async_handlers = True

    def _check_handler(self, handler: Callable[..., Any], what: str) -> None:
        if not self._accepts_async_handlers and is_async_callable(handler):
            raise TypeError(
                f"{what} is async (a coroutine function): {type(self).__module__}.{type(self).__name__} runs "
                "plain functions on worker threads; use winerp.aio.Client for async handlers"
            )

    def _run_route(
        self,
        handler: Callable[..., Any],
        source: str,
        kwargs: dict[str, Any],
        finish: Callable[[Any, BaseException | None], None],
    ) -> None:
        """Run a route handler off the reader thread, then call ``finish`` (`Hooks.run_route`)."""
        raise NotImplementedError

    def _run_event(self, handler: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Run an event handler off the reader thread, in order (`Hooks.run_event`)."""
        raise NotImplementedError

    def _lend_reader(self, fileno: int, read: Callable[[], bool]) -> Callable[[], bool] | None:
        """Offer to read the connection (`Hooks.lend_reader`); None declines."""
        return None

    def _batch_writes(self) -> LoopTurns | None:
        """The event loop whose turns batch what is sent from it (`Hooks.batch_writes`); None: none."""
        return None
