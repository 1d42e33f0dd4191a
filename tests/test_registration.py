"""Registration fails fast: a handler that could never work is refused where it is registered.

An async handler given to the sync client (it would return a coroutine nobody awaits, and
the caller would get an encoding error) raises `TypeError`; a route handler with a
parameter named ``timeout`` (no caller could ever pass it: ``request()`` takes ``timeout``
itself) raises `ValueError`, in both clients.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import winerp
import winerp.aio
import winerp.sync

CLIENTS = [winerp.sync.Client, winerp.aio.Client]


async def _async_route(source: str, x: int = 0) -> int:
    return x


async def _async_generator(source: str) -> AsyncIterator[int]:
    yield 1


class _AsyncCallable:
    async def __call__(self, source: str) -> str:
        return "called"


class _Handlers:
    async def method(self, source: str) -> str:
        return "method"


def _async_handlers() -> list[tuple[str, Callable[..., Any]]]:
    return [
        ("coroutine function", _async_route),
        ("partial of a coroutine function", functools.partial(_async_route, x=1)),
        ("nested partial", functools.partial(functools.partial(_async_route), x=2)),
        ("object with an async __call__", _AsyncCallable()),
        ("partial of such an object", functools.partial(_AsyncCallable())),
        ("bound async method", _Handlers().method),
        ("async generator function", _async_generator),
    ]


@pytest.mark.parametrize(("kind", "handler"), _async_handlers(), ids=[kind for kind, _ in _async_handlers()])
def test_sync_client_refuses_async_route_handlers(kind: str, handler: Callable[..., Any]) -> None:
    client = winerp.sync.Client("a")
    with pytest.raises(TypeError, match=r"async.*winerp\.aio\.Client") as caught:
        client.route("name")(handler)
    assert "'name'" in str(caught.value)
    if hasattr(handler, "__name__"):
        with pytest.raises(TypeError):
            client.route(handler)
        with pytest.raises(TypeError):
            client.route()(handler)
    # Nothing was registered: the name is still free for a plain handler.
    client.route("name")(lambda source: None)
    assert list(client._core.routes) == ["name"]


def test_sync_client_refuses_async_event_handlers() -> None:
    client = winerp.sync.Client("a")

    async def on_winerp_ready() -> None:
        pass

    with pytest.raises(TypeError, match="on_winerp_ready"):
        client.event(on_winerp_ready)
    assert client._core.events == {}

    def on_winerp_connect() -> None:  # a plain one is fine
        pass

    client.event(on_winerp_connect)


def test_sync_client_accepts_plain_callables() -> None:
    class Plain:
        def __call__(self, source: str) -> str:
            return "plain"

    client = winerp.sync.Client("a")
    client.route("object")(Plain())
    client.route("partial")(functools.partial(lambda source, x: x, x=1))
    client.route("class")(Plain)  # calling a class makes an instance: a value
    assert sorted(client._core.routes) == ["class", "object", "partial"]


def test_aio_client_accepts_every_kind_of_async_handler() -> None:
    client = winerp.aio.Client("a")
    for index, (_, handler) in enumerate(_async_handlers()[:-1]):  # all but the generator
        client.route(f"r{index}")(handler)
    assert len(client._core.routes) == 6


def _takes_timeout(source: str, timeout: float) -> None: ...


def _takes_timeout_with_default(source: str, timeout: float = 5) -> None: ...


def _takes_keyword_timeout(source: str, *, timeout: int) -> None: ...


@pytest.mark.parametrize("client_class", CLIENTS, ids=["sync", "aio"])
@pytest.mark.parametrize("handler", [_takes_timeout, _takes_timeout_with_default, _takes_keyword_timeout])
def test_route_with_a_timeout_parameter_is_refused(client_class: type[Any], handler: Callable[..., Any]) -> None:
    client = client_class("a")
    with pytest.raises(ValueError, match="timeout") as caught:
        client.route(handler)
    assert handler.__name__ in str(caught.value)
    with pytest.raises(ValueError, match="timeout"):
        client.route("alias")(handler)

    async def async_with_timeout(source: str, timeout: float) -> None: ...

    if client_class is winerp.aio.Client:
        with pytest.raises(ValueError, match="timeout"):
            client.route(async_with_timeout)
    assert client._core.routes == {}


@pytest.mark.parametrize("client_class", CLIENTS, ids=["sync", "aio"])
def test_other_parameters_are_fine(client_class: type[Any]) -> None:
    client = client_class("a")

    def first_named_timeout(timeout: str) -> str:  # odd, but it receives the caller's name
        return timeout

    def timeout_s(source: str, timeout_s: float, **kwargs: Any) -> None: ...

    client.route(first_named_timeout)
    client.route(timeout_s)
    client.route("builtin")(print)  # no signature to read: nothing to refuse
    assert sorted(client._core.routes) == ["builtin", "first_named_timeout", "timeout_s"]


def test_aio_client_runs_async_callable_objects_on_its_loop(hub: winerp.Hub) -> None:
    # Before: an object with an async __call__ ran in a worker thread, returned a coroutine
    # and the caller got "Encoding objects of type coroutine is unsupported".
    class Unhashable(_AsyncCallable):
        __hash__ = None  # type: ignore[assignment]

    async def main() -> list[Any]:
        async with (
            winerp.aio.Client("server", port=hub.port) as server,
            winerp.aio.Client("caller", port=hub.port) as caller,
        ):
            server.route("object")(_AsyncCallable())
            server.route("unhashable")(Unhashable())
            server.route("partial")(functools.partial(_async_route, x=7))
            server.route("method")(_Handlers().method)
            await caller.ping("server")
            calls = [caller.request(route, "server", timeout=10) for route in ("object", "unhashable", "partial")]
            return [*await asyncio.gather(*calls), await caller.request("method", "server", timeout=10)]

    assert asyncio.run(main()) == ["called", "called", 7, "method"]


def test_sync_client_plain_handlers_still_answer(hub: winerp.Hub) -> None:
    with winerp.sync.Client("server", port=hub.port) as server, winerp.sync.Client("caller", port=hub.port) as caller:

        class Plain:
            def __call__(self, source: str, x: int) -> int:
                return x + 1

        server.route("object")(Plain())
        server.route("partial")(functools.partial(lambda source, x, y: x + y, y=10))
        assert caller.request("object", "server", x=1) == 2
        assert caller.request("partial", "server", x=1) == 11


@pytest.mark.parametrize("client_class", CLIENTS, ids=["sync", "aio"])
def test_a_nameless_handler_must_be_given_a_name(client_class: type[Any]) -> None:
    class Plain:
        def __call__(self, source: str) -> None: ...

    client = client_class("a")
    for handler in (functools.partial(print), Plain()):
        with pytest.raises(TypeError, match=r"route\('some_name'\)"):
            client.route(handler)
        with pytest.raises(TypeError, match="no __name__"):
            client.route()(handler)
    client.route("named")(Plain())
    assert list(client._core.routes) == ["named"]
