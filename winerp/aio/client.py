"""The asyncio client: awaits the core's futures; handlers run on the event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Literal, overload

from .. import errors
from ..client.base import BaseClient, call_event, call_route, destinations_list, is_async_callable
from ..client.calls import Call
from ..client.events import LoopTurns
from .tasks import start_task

__all__ = ["Client"]

logger = logging.getLogger(__name__)


class Client(BaseClient):
    """An asyncio winerp client, for bots and async web apps.

    The same methods as `winerp.sync.Client`, awaited. Call them from the event loop that
    started the client. Route and event handlers may be coroutine functions, run as tasks
    on that loop, or plain functions, run in worker threads so a blocking handler never
    blocks the loop. Events arrive in order.

    Args:
        local_name: This client's unique name on the hub.
        host: Hub address.
        port: Hub port.
        reconnect: Come back by itself after the connection drops (exponential backoff with
            jitter); ``False`` never comes back.
        token: Shared secret the hub requires; defaults to ``$WINERP_TOKEN``.
        ssl_context: Connect with TLS (``wss://``) using this client-side context.
        max_message_size: Largest message this client sends, in bytes (the hub may announce
            a smaller one); larger ones raise `PayloadTooLarge`.
        backoff_initial: First reconnect delay, in seconds.
        backoff_max: Cap on the reconnect delay, in seconds.
        handler_workers: Most plain route handlers running at once.

    Example::

        async with Client("bot", port=13254) as client:
            print(await client.request("get_user", "dashboard", user_id=1))
    """

    # No __init__ of its own: the constructor is BaseClient's, so both clients have one
    # signature. The loop is the one that called start().
    _loop: asyncio.AbstractEventLoop | None = None
    _loop_thread: int | None = None

    @functools.cached_property
    def _tasks(self) -> set[asyncio.Task[None]]:
        """Handler tasks running on the loop, cancelled by `close`. Used on the loop only."""
        return set()

    @functools.cached_property
    def _handler_kinds(self) -> dict[int, tuple[Callable[..., Any], bool]]:
        """Whether each handler seen is a coroutine function, by ``id`` (the handler is kept, so
        its ``id`` stays its own): looked at once per handler, not once per message."""
        return {}

    def _is_coroutine(self, handler: Callable[..., Any]) -> bool:
        known = self._handler_kinds.get(id(handler))
        if known is None:
            known = self._handler_kinds[id(handler)] = (handler, is_async_callable(handler))
        return known[1]

    # lifecycle

    async def start(self, timeout: float | None = None) -> None:
        """Connect, register the name and routes; return once ready (or on hold).

        ``asyncio.create_task(client.start())`` followed by ``await client.wait_until_ready()``
        works too (the winerp 1.x way), also when the hub comes up later: with no ``timeout``
        and ``reconnect=True`` it keeps trying until the hub answers, however late (each
        failed attempt is logged as a warning, with the next delay); with ``reconnect=False``,
        one attempt. With a ``timeout``, it raises within it, whatever ``reconnect`` is, and
        the client gives up.

        Raises:
            HubUnreachable: no hub accepted the connection (a `ConnectionError` too).
            UnauthorizedError: the hub refused the token (never retried).
            RequestTimeout: the hub did not answer within ``timeout``.
            ClientNotReadyError: the client was closed, or this is a forked child of the
                process that started it.
        """
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        await self._bridge(self._core.start(timeout))

    async def wait_until_ready(self, timeout: float | None = None) -> None:
        """Wait until the client is ready.

        Raises:
            RequestTimeout: not ready within ``timeout``.
            WinerpError: the client has given up (its start timed out or was refused, its
                connection dropped with ``reconnect=False``, or it was closed): that error,
                at once, whatever ``timeout`` is.
        """
        ready = asyncio.wrap_future(self._core.ready_future())
        # Not wait_for: the error a client gave up with may be a RequestTimeout, itself a
        # TimeoutError, and must come out as it is.
        done, _ = await asyncio.wait({ready}, timeout=timeout)
        if not done:
            ready.cancel()
            raise errors.RequestTimeout(f"client {self.name!r} not ready within {timeout} s")
        ready.result()

    async def close(self) -> None:
        """Leave the hub; requests in flight fail with `ConnectionLost`. Idempotent."""
        if self._core.forked:  # a forked child has none of the parent's threads or tasks to stop
            self._core.close()
            return
        self._core.close()
        join_workers = self._workers.close()
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        # Joining worker threads blocks: do it off the loop, and wait for it here, so no
        # thread of this client outlives close().
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def join() -> None:
            join_workers()
            loop.call_soon_threadsafe(_set_once, done)

        closer = threading.Thread(target=join, name=f"winerp-close-{self.name}", daemon=True)
        closer.start()
        await done
        # Its work is done; this only waits the instant it takes the thread to end, so that
        # no thread of this client is alive once close() returns.
        closer.join()

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # calls

    async def request(self, route: str, source: str, timeout: float = 60, **kwargs: Any) -> Any:
        """Call ``route`` on the client named ``source`` and return what its handler returns.

        Raises:
            ClientNotReadyError: not connected or on hold (raised at once).
            DestinationNotFound: no client of that name is connected.
            RouteNotFound: that client has no such route.
            ClientRuntimeError: the remote handler raised.
            RequestTimeout: no answer within ``timeout`` seconds.
            PeerDisconnected: ``source`` left before answering.
            ConnectionLost: this client's connection dropped first.
            PayloadTooLarge: the request or its answer exceeds the size limit.
            TypeError: an argument cannot be encoded (nothing was sent).
        """
        waiter, listener = self._waiter()
        return await self._wait(self._core.request(source, route, kwargs, listener, timeout), waiter)

    def submit(self, route: str, source: str, timeout: float = 60, **kwargs: Any) -> asyncio.Future[Any]:
        """Send a request now and return at once: an asyncio future of its answer.

        For many requests in flight without a task each: the requests leave in the order
        submitted, and ``await future`` returns what `request` would have returned, or
        raises what it would have raised. Call it from the client's loop. Cancelling the
        future drops the answer. Nobody has to await it: without an answer it ends with
        `RequestTimeout` on its own, ``timeout`` seconds after it was sent (give or take a
        quarter of the hub's heartbeat).

        Raises:
            ClientNotReadyError: not connected or on hold (raised at once, nothing sent).
            PayloadTooLarge: the request exceeds the size limit (nothing sent).
            TypeError: an argument cannot be encoded (nothing sent).
        """
        waiter, listener = self._waiter()
        call = self._core.request(source, route, kwargs, listener, timeout, unattended=True)
        core = self._core

        def dropped(waiter: asyncio.Future[Any]) -> None:
            if waiter.cancelled():
                core.forget(call)  # the late answer is dropped quietly

        waiter.add_done_callback(dropped)
        return waiter

    async def inform(self, data: Any, destinations: str | list[str] | tuple[str, ...] | None = None) -> None:
        """Deliver ``data`` to the named clients, or to every other client; fire and forget.

        Raises:
            ClientNotReadyError: not connected or on hold.
            TypeError: the data cannot be encoded (nothing was sent).
            PayloadTooLarge: the message exceeds the size limit.
        """
        self._core.inform(data, destinations_list(destinations))

    async def ping(self, name: str | None = None, timeout: float = 5) -> bool:
        """Return True if the hub (``name=None``) or the named client answers, False if it is not connected.

        Raises:
            ClientNotReadyError: this client is not connected.
            RequestTimeout: no answer within ``timeout``.
        """
        waiter, listener = self._waiter()
        return bool(await self._wait(self._core.ping(name, listener, timeout), waiter))

    @overload
    async def peers(self, timeout: float = ..., routes: Literal[False] = ...) -> list[str]: ...

    @overload
    async def peers(self, timeout: float, routes: Literal[True]) -> dict[str, list[str]]: ...

    @overload
    async def peers(self, *, timeout: float = ..., routes: Literal[True]) -> dict[str, list[str]]: ...

    @overload
    async def peers(self, timeout: float = ..., routes: bool = ...) -> list[str] | dict[str, list[str]]: ...

    async def peers(self, timeout: float = 5, routes: bool = False) -> list[str] | dict[str, list[str]]:
        """Return the sorted names of the other clients that are ready on the hub.

        With ``routes=True``, return ``{name: sorted names of its routes}`` instead (a
        winerp 1.x client, whose routes the hub cannot know, has an empty list).

        Raises:
            ClientNotReadyError: this client is not connected.
            RequestTimeout: no answer within ``timeout``.
        """
        waiter, listener = self._waiter()
        result: list[str] | dict[str, list[str]] = await self._wait(self._core.peers(routes, listener, timeout), waiter)
        return result

    async def request_many(
        self, route: str, sources: Iterable[str] | None = None, timeout: float = 60, **kwargs: Any
    ) -> dict[str, Any]:
        """Call ``route`` on several clients at once (every other client that has it when ``sources`` is None).

        Returns:
            ``{name: return value, or the WinerpError that ended that call}``, once every call
            has ended and never later than ``timeout``.
        """
        gathering = self._core.request_many(route, sources, kwargs, timeout)
        timer = asyncio.get_running_loop().call_later(gathering.timeout, gathering.expire)
        try:
            return await asyncio.wrap_future(gathering.future)
        finally:
            timer.cancel()

    def _waiter(self) -> tuple[asyncio.Future[Any], Callable[[Call], None]]:
        """A future of the running loop, and the call listener that ends it from any thread.

        When the call ends on the loop's own thread (the loop reads the connection), the
        outcome is passed on at once, without a wake-up.
        """
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        on_thread = threading.get_ident()

        return waiter, lambda call: _call_on(loop, on_thread, _pass_on, call, waiter)

    async def _wait(self, call: Call, waiter: asyncio.Future[Any]) -> Any:
        # The core knows the call's timeout and the error it ends with; a timer of the loop
        # asks it to end the call then (so no wait_for task is needed).
        timer = waiter.get_loop().call_later(call.timeout, self._core.expire, call)
        try:
            return await waiter
        except asyncio.CancelledError:
            self._core.forget(call)  # the late answer is dropped quietly
            raise
        finally:
            timer.cancel()

    # The core's hooks (lent through `FacadeHooks`), called by the thread that read the request

    def _run_route(
        self,
        handler: Callable[..., Any],
        source: str,
        kwargs: dict[str, Any],
        finish: Callable[[Any, BaseException | None], None],
    ) -> None:
        """Run a coroutine handler on the loop, a plain one in a worker thread."""
        if self._is_coroutine(handler):
            if not self._spawn(_run_route(handler, source, kwargs, finish)):
                finish(None, errors.ClientNotReadyError(f"client {self.name!r} has no running event loop"))
            return
        pool = self._workers.handlers()
        if pool is None:
            finish(None, errors.ClientNotReadyError(f"client {self.name!r} is closed"))
        else:
            pool.submit(call_route, handler, source, kwargs, finish)

    def _run_event(self, handler: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Run an event handler: coroutines as tasks on the loop, plain functions on the event thread."""
        if self._is_coroutine(handler):
            self._spawn(_run_event(handler, args))
            return
        pool = self._workers.events()
        if pool is not None:
            pool.submit(call_event, handler, args)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> bool:
        """Start ``coroutine`` as a task on the client's loop, from any thread; False if the loop is gone."""
        loop = self._loop
        if threading.get_ident() == self._loop_thread and not self._workers.closed:
            # The usual case, a handler due on the loop's own thread (the loop reads the
            # connection): the loop runs, so it is not closed.
            assert loop is not None
            task = start_task(loop, coroutine)
            if task is not None:
                self._track_task(task)
            return True
        if loop is None or loop.is_closed() or self._workers.closed:
            coroutine.close()
            return False
        try:
            loop.call_soon_threadsafe(self._start_task, coroutine)
        except RuntimeError:  # closed between the check and the call
            coroutine.close()
            return False
        return True

    def _start_task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        self._track_task(start_task(self._loop, coroutine))

    def _track_task(self, task: asyncio.Task[None] | None) -> None:
        # Kept until done, so that close() can cancel what is still running (a handler
        # that ended in its first step is None here: nothing to keep).
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _lend_reader(self, fileno: int, read: Callable[[], bool]) -> Callable[[], bool] | None:
        """Read the connection on this client's event loop (called by the core).

        Answers then reach their awaiting tasks, and requests their coroutine handlers,
        with no hand-off from another thread: the loop wakes once, for the socket.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        reader = _LoopReader(loop, os.dup(fileno), read)
        try:
            loop.call_soon_threadsafe(reader.attach)
        except RuntimeError:  # the loop closed meanwhile
            reader.close()
            return None
        return reader.can_read

    def _batch_writes(self) -> LoopTurns | None:
        """This client's loop, whose callers and coroutine handlers may have their frames gathered."""
        loop, thread = self._loop, self._loop_thread
        if loop is None or thread is None or loop.is_closed():
            return None
        return thread, loop.call_soon

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _bridge(self, future: concurrent.futures.Future[Any]) -> asyncio.Future[Any]:
        """An asyncio future of this client's loop that ends with ``future``.

        Like `asyncio.wrap_future`, but when ``future`` ends on the loop's own thread (the
        loop reads the connection) the outcome is passed on at once, without a wake-up.
        """
        loop = self._loop
        assert loop is not None
        waiter = loop.create_future()

        future.add_done_callback(lambda done: _call_on(loop, self._loop_thread, _copy_outcome, done, waiter))
        return waiter


class _LoopReader:
    """The connection's socket watched by an event loop, through a file descriptor of its own.

    The duplicate descriptor stays open until the loop itself stops watching it, so the
    core may close the connection's socket at any time without the loop ever watching a
    number the system has given to another file.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, read: Callable[[], bool]) -> None:
        self._loop = loop
        self._fd = fd
        self._read = read
        self._ok = True

    def attach(self) -> None:
        try:
            self._loop.add_reader(self._fd, self._on_readable)
        except Exception:  # noqa: BLE001 - e.g. a loop that cannot watch sockets: the core reads
            self._ok = False
            self.close()

    def can_read(self) -> bool:
        if self._loop.is_closed():
            self.close()  # a closed loop watches nothing any more: the descriptor is free to go
            return False
        return self._ok and self._loop.is_running()

    def _on_readable(self) -> None:
        if not self._read():
            self._ok = False
            self._loop.remove_reader(self._fd)
            self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


async def _run_route(
    handler: Callable[..., Any],
    source: str,
    kwargs: dict[str, Any],
    finish: Callable[[Any, BaseException | None], None],
) -> None:
    try:
        value = await handler(source, **kwargs)
    except Exception as exc:  # noqa: BLE001 - reported to the caller
        finish(None, exc)
    else:
        finish(value, None)


async def _run_event(handler: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        await handler(*args)
    except Exception:
        logger.exception("event handler %r raised", getattr(handler, "__name__", handler))


def _call_on(
    loop: asyncio.AbstractEventLoop, loop_thread: int | None, callback: Callable[..., None], *args: Any
) -> None:
    """Run ``callback(*args)`` on ``loop``, at once when called on the loop's own thread.

    From another thread it goes through ``call_soon_threadsafe``, and is dropped if the loop
    is closed (nobody waits any more).
    """
    if threading.get_ident() == loop_thread:
        callback(*args)
        return
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:
        pass


def _pass_on(call: Call, waiter: asyncio.Future[Any]) -> None:
    if waiter.done():
        return  # cancelled meanwhile
    if call.error is not None:
        waiter.set_exception(call.error)
    else:
        waiter.set_result(call.value)


def _copy_outcome(source: concurrent.futures.Future[Any], target: asyncio.Future[Any]) -> None:
    if target.done():
        return  # cancelled meanwhile
    if source.cancelled():
        target.cancel()
        return
    error = source.exception()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


def _set_once(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
