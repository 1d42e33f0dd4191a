"""A small winerp program, as a user writes it, checked by ``mypy --strict`` in CI.

The annotated assignments are the check: each says what the program expects a call to
return, and ``mypy --strict`` fails when winerp's types say otherwise. The lines with a
``type: ignore[...]`` are the negative checks: they must be type errors, and strict mode
(``warn_unused_ignores``) fails if one stops being an error, e.g. because a result became
``Any``. The program also runs (``python tests/typing/user_program.py``): a test runs it
against a real hub, so what it claims is true at run time too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

import winerp
import winerp.aio
import winerp.sync
from winerp import errors


def blocking_part(port: int) -> None:
    """The blocking client: every form of the decorators, every call, errors and events."""
    server: winerp.sync.Client = winerp.sync.Client("typed-sync-server", port=port)
    caller = winerp.sync.Client("typed-sync-caller", "127.0.0.1", port, reconnect=False, token=None)

    @server.route
    def double(source: str, x: int) -> int:
        return 2 * x

    @server.route()
    def name_of(source: str) -> str:
        return source

    @server.route("alias")
    def aliased(source: str) -> str:
        return "alias"

    def plain(source: str) -> None:
        return None

    registered = server.route(plain)
    assert registered is plain  # still the plain function
    still_callable: int = double("me", x=2)  # decorated functions stay callable, typed as before

    @server.event
    def on_winerp_ready() -> None:
        pass

    @server.event
    def on_winerp_information(data: Any, source: str) -> None:
        pass

    server.start(timeout=5)
    with caller:
        ready: bool = caller.is_ready
        name: str = caller.name
        answer: Any = caller.request("double", "typed-sync-server", timeout=5, x=21)
        caller.inform({"hello": 1}, "typed-sync-server")
        caller.inform("to everyone")
        hub_alive: bool = caller.ping()
        names: list[str] = caller.peers()
        routes: dict[str, list[str]] = caller.peers(routes=True)
        routes_again: dict[str, list[str]] = caller.peers(5, True)
        many: dict[str, Any] = caller.request_many("double", timeout=5, x=1)
        submitted: concurrent.futures.Future[Any] = caller.submit("double", "typed-sync-server", x=2)
        assert submitted.result(5) is not None
        missing: str = _failure(caller, "missing")
        remote: str = _failure(caller, "alias", boom=1)
        # Negative checks: these are type errors.
        wrong_names: dict[str, list[str]] = caller.peers()  # type: ignore[assignment]
        wrong_routes: list[str] = caller.peers(routes=True)  # type: ignore[assignment]
        wrong_ping: str = caller.ping()  # type: ignore[assignment]
        try:
            caller.is_ready = False  # type: ignore[misc]
        except AttributeError:
            pass
    server.close()
    assert answer == 42 and ready and hub_alive and name == "typed-sync-caller" and still_callable == 4
    assert names == ["typed-sync-server"] and routes == routes_again
    assert routes["typed-sync-server"] == ["alias", "double", "name_of", "plain"]
    assert many == {"typed-sync-server": 2}
    assert missing.startswith("RouteNotFound") and remote.startswith("TypeError: ")
    del wrong_names, wrong_routes, wrong_ping


def _failure(caller: winerp.sync.Client, route: str, **kwargs: Any) -> str:
    """What a failed request says: the error's type and text."""
    try:
        caller.request(route, "typed-sync-server", timeout=5, **kwargs)
    except errors.ClientRuntimeError as exc:
        kind: str = exc.remote_type
        return f"{kind}: {exc.remote_message}" if str(exc).startswith(kind) else "?"
    except winerp.WinerpError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


async def asyncio_part(port: int) -> None:
    """The asyncio client, reached through the 1.x path `winerp.Client`."""
    server: winerp.aio.Client = winerp.Client("typed-aio-server", port=port)
    client_class: type[winerp.aio.Client] = winerp.Client

    @server.route
    async def double(source: str, x: int) -> int:
        return 2 * x

    @server.route("blocking")
    def blocking(source: str) -> str:
        return "ran in a thread"

    @server.event
    async def on_winerp_peer_join(name: str) -> None:
        pass

    @server.event
    async def on_winerp_error(error: Exception) -> None:
        pass

    await server.start(timeout=5)
    async with client_class("typed-aio-caller", port=port) as caller:
        await caller.wait_until_ready(timeout=5)
        answer: Any = await caller.request("double", "typed-aio-server", x=21)
        await caller.inform([1, 2], ["typed-aio-server"])
        peer_alive: bool = await caller.ping("typed-aio-server", timeout=5)
        names: list[str] = await caller.peers()
        routes: dict[str, list[str]] = await caller.peers(routes=True)
        many: dict[str, Any] = await caller.request_many("double", ["typed-aio-server"], x=2)
        submitted: asyncio.Future[Any] = caller.submit("double", "typed-aio-server", x=3)
        assert await submitted is not None
        on_hold: bool = caller.on_hold
        authorized: bool = caller.authorized
        try:
            await caller.request("double", "nobody", timeout=1, x=1)
        except errors.DestinationNotFound:
            pass
        except winerp.WinerpError as exc:
            raise AssertionError(exc) from exc
        # Negative checks: these are type errors.
        wrong_names: dict[str, list[str]] = await caller.peers()  # type: ignore[assignment]
        wrong_routes: list[str] = await caller.peers(routes=True)  # type: ignore[assignment]
        not_awaited: bool = caller.ping()  # type: ignore[assignment]
    await server.close()
    assert answer == 42 and peer_alive and not on_hold and authorized
    assert names == ["typed-aio-server"] and routes == {"typed-aio-server": ["blocking", "double"]}
    assert many == {"typed-aio-server": 4}
    not_awaited.close()  # type: ignore[attr-defined]
    del wrong_names, wrong_routes


def main() -> None:
    """Run both parts against a hub of their own."""
    hub: winerp.Hub = winerp.Hub(port=0)
    with hub:
        port: int = hub.port
        blocking_part(port)
        asyncio.run(asyncio_part(port))
        clients: list[str] = hub.clients
    server_class: type[winerp.Hub] = winerp.Server
    version: str = winerp.__version__
    assert clients == [] and server_class is winerp.Hub and version
    print("typed program ok")


if __name__ == "__main__":
    main()
