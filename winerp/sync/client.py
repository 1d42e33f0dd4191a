"""The blocking client: waits on the core's futures; handlers run on a thread pool."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterable
from typing import Any, Literal, overload

from .. import errors
from ..client.base import BaseClient, call_event, call_route, destinations_list
from ..client.calls import Call, resolve

__all__ = ["Client"]


class Client(BaseClient):
    """A blocking winerp client, for scripts, Flask workers and any threaded code.

    Thread-safe: any number of threads may call one client at once. Route handlers run on
    a pool of worker threads (so a handler may itself call `request`, even back into its
    caller); event handlers run one at a time, in order, on one event thread.

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

        with Client("worker", port=13254) as client:
            print(client.request("get_user", "bot", user_id=1))
    """

    # lifecycle

    def start(self, timeout: float | None = None) -> None:
        """Connect, register the name and routes; return once ready (or on hold).

        With no ``timeout`` and ``reconnect=True`` it keeps trying until the hub answers,
        however late (each failed attempt is logged as a warning, with the next delay); with
        ``reconnect=False``, one attempt. With a ``timeout``, it raises within it, whatever
        ``reconnect`` is, and the client gives up.

        Raises:
            HubUnreachable: no hub accepted the connection (a `ConnectionError` too).
            UnauthorizedError: the hub refused the token (never retried).
            RequestTimeout: the hub did not answer within ``timeout``.
            ClientNotReadyError: the client was closed, or this is a forked child of the
                process that started it.
        """
        self._core.start(timeout).result()

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Block until the client is ready.

        Raises:
            RequestTimeout: not ready within ``timeout``.
            WinerpError: the client has given up (its start timed out or was refused, its
                connection dropped with ``reconnect=False``, or it was closed): that error,
                at once, whatever ``timeout`` is.
        """
        if self._core.is_ready:
            return
        ready = self._core.ready_future()
        try:
            ready.result(timeout)
        except concurrent.futures.TimeoutError:
            # RequestTimeout is a TimeoutError too: it may be the error the client gave up with.
            if ready.done():
                raise
            ready.cancel()
            raise errors.RequestTimeout(f"client {self.name!r} not ready within {timeout} s") from None

    def close(self) -> None:
        """Leave the hub; requests in flight fail with `ConnectionLost`. Idempotent."""
        self._core.close()
        if not self._core.forked:  # a forked child has none of the parent's threads to stop
            self._workers.close()()

    def __enter__(self) -> Client:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # calls

    def request(self, route: str, source: str, timeout: float = 60, **kwargs: Any) -> Any:
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
        ended = threading.Lock()
        ended.acquire()
        return self._wait(self._core.request(source, route, kwargs, lambda _: ended.release(), timeout), ended)

    def submit(self, route: str, source: str, timeout: float = 60, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Send a request and return at once: a `concurrent.futures.Future` of its answer.

        For many requests in flight from one thread: ``future.result()`` returns what
        `request` would have returned, or raises what it would have raised. The request is
        on its way, so the future cannot be cancelled. Nobody has to wait on it: without an
        answer it ends with `RequestTimeout` on its own, ``timeout`` seconds after it was
        sent (give or take a quarter of the hub's heartbeat).

        Raises:
            ClientNotReadyError: not connected or on hold (raised at once, nothing sent).
            PayloadTooLarge: the request exceeds the size limit (nothing sent).
            TypeError: an argument cannot be encoded (nothing sent).
        """
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()  # on its way: cancel() is refused

        def ended(call: Call) -> None:
            resolve(future, call.value, call.error)

        self._core.request(source, route, kwargs, ended, timeout, unattended=True)
        return future

    def inform(self, data: Any, destinations: str | list[str] | tuple[str, ...] | None = None) -> None:
        """Deliver ``data`` to the named clients, or to every other client; fire and forget.

        Raises:
            ClientNotReadyError: not connected or on hold.
            TypeError: the data cannot be encoded (nothing was sent).
            PayloadTooLarge: the message exceeds the size limit.
        """
        self._core.inform(data, destinations_list(destinations))

    def ping(self, name: str | None = None, timeout: float = 5) -> bool:
        """Return True if the hub (``name=None``) or the named client answers, False if it is not connected.

        Raises:
            ClientNotReadyError: this client is not connected.
            RequestTimeout: no answer within ``timeout``.
        """
        ended = threading.Lock()
        ended.acquire()
        return bool(self._wait(self._core.ping(name, lambda _: ended.release(), timeout), ended))

    @overload
    def peers(self, timeout: float = ..., routes: Literal[False] = ...) -> list[str]: ...

    @overload
    def peers(self, timeout: float, routes: Literal[True]) -> dict[str, list[str]]: ...

    @overload
    def peers(self, *, timeout: float = ..., routes: Literal[True]) -> dict[str, list[str]]: ...

    @overload
    def peers(self, timeout: float = ..., routes: bool = ...) -> list[str] | dict[str, list[str]]: ...

    def peers(self, timeout: float = 5, routes: bool = False) -> list[str] | dict[str, list[str]]:
        """Return the sorted names of the other clients that are ready on the hub.

        With ``routes=True``, return ``{name: sorted names of its routes}`` instead (a
        winerp 1.x client, whose routes the hub cannot know, has an empty list).

        Raises:
            ClientNotReadyError: this client is not connected.
            RequestTimeout: no answer within ``timeout``.
        """
        ended = threading.Lock()
        ended.acquire()
        result: list[str] | dict[str, list[str]] = self._wait(
            self._core.peers(routes, lambda _: ended.release(), timeout), ended
        )
        return result

    def request_many(
        self, route: str, sources: Iterable[str] | None = None, timeout: float = 60, **kwargs: Any
    ) -> dict[str, Any]:
        """Call ``route`` on several clients at once (every other client that has it when ``sources`` is None).

        Returns:
            ``{name: return value, or the WinerpError that ended that call}``, once every call
            has ended and never later than ``timeout``.
        """
        gathering = self._core.request_many(route, sources, kwargs, timeout)
        try:
            return gathering.future.result(gathering.timeout)
        except errors.WinerpError:
            raise
        except concurrent.futures.TimeoutError:
            gathering.expire()
            return gathering.future.result(1)

    def _call_hub(self, route: str, timeout: float) -> Any:
        ended = threading.Lock()
        ended.acquire()
        return self._wait(self._core.call_hub(route, None, lambda _: ended.release(), timeout), ended)

    def _wait(self, call: Call, ended: threading.Lock) -> Any:
        """Wait for ``call``, whose listener releases ``ended``; its value, or raise its error.

        A plain lock released by the thread that ends the call wakes this one exactly once.
        The core knows the call's timeout and the error it ends with; this only waits.
        """
        try:
            if not ended.acquire(timeout=call.timeout):
                # Ends the call now, unless another thread is ending it this instant; either
                # way `ended` is released at once.
                self._core.expire(call)
                ended.acquire(timeout=5)
        except BaseException:
            self._core.forget(call)  # e.g. KeyboardInterrupt: a late answer is dropped
            raise
        return call.outcome()

    # The core's hooks (lent through `FacadeHooks`), called by the thread that read the request

    _accepts_async_handlers = False  # handlers run on threads: an async one is refused at registration

    def _run_route(
        self,
        handler: Callable[..., Any],
        source: str,
        kwargs: dict[str, Any],
        finish: Callable[[Any, BaseException | None], None],
    ) -> None:
        """Run a route handler on the worker pool."""
        pool = self._workers.handlers()
        if pool is not None:
            pool.submit(call_route, handler, source, kwargs, finish)

    def _run_event(self, handler: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Run an event handler on the event thread, in order."""
        pool = self._workers.events()
        if pool is not None:
            pool.submit(call_event, handler, args)


def hub_status(client: Client, timeout: float = 5) -> dict[str, Any]:
    """The hub's status object (what ``winerp status --json`` prints), asked by ``client``.

    For the command line and tools; the status lists ``client`` itself too.

    Raises:
        ClientNotReadyError: ``client`` is not connected.
        RequestTimeout: no answer within ``timeout``.
    """
    status: dict[str, Any] = client._call_hub("status", timeout)
    return status
