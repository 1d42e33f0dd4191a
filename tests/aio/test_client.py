"""winerp.aio.Client against a real hub on a free port.

The same test names as tests/sync/test_client.py, for the same behaviour, plus a few
asyncio-only extras (listed in tests/test_parity.py). Each test is a coroutine run by
`asyncio.run` through the `aio` decorator, which also closes the test's clients on its loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, Callable

import pytest

import winerp
import winerp.aio
from winerp import errors
from winerp.aio import Client

try:
    from conftest import winerp_threads
    from lifecycle_tools import free_port, slowloris_hub
    from security_tools import raw_ws
except ImportError:  # tests/ is a package
    from tests.conftest import winerp_threads
    from tests.lifecycle_tools import free_port, slowloris_hub
    from tests.security_tools import raw_ws

pytestmark = pytest.mark.timeout(60)

#: "Promptly" in the API contract is "well under a second"; generous for a loaded machine.
PROMPT = 1.5

ROUND_TRIP_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -7,
    2**64,
    -(2**100),
    3.25,
    "",
    "héllo ✓",
    b"",
    b"\x00\xff",
    [],
    [1, "two", None],
    {},
    {"a": {"b": [1, {"c": b"d"}]}},
]


class Clients:
    """Makes clients on the hub; the `aio` decorator closes them all on the test's loop."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.made: list[Client] = []

    async def __call__(self, name: str, *, start: bool = True, **options: Any) -> Client:
        client = Client(name, port=self.port, **options)
        self.made.append(client)
        if start:
            await client.start(timeout=5)
        return client

    async def close_all(self) -> None:
        for client in self.made:
            await client.close()


@pytest.fixture
def clients(hub: winerp.Hub) -> Clients:
    return Clients(hub.port)


def aio(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test with `asyncio.run`; close the clients it made on the same loop."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        async def main() -> None:
            try:
                await test(*args, **kwargs)
            finally:
                for value in kwargs.values():
                    if isinstance(value, Clients):
                        await value.close_all()

        asyncio.run(main())

    return run


class Recorder:
    """Collects what handlers see, from the loop or from worker threads; `wait` awaits enough."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

    def add(self, item: Any) -> None:
        self.items.append(item)
        if _on_loop(self._loop):
            self._changed.set()
        else:
            self._loop.call_soon_threadsafe(self._changed.set)

    async def wait(self, count: int = 1, timeout: float = 5.0) -> list[Any]:
        async def enough() -> None:
            while len(self.items) < count:
                self._changed.clear()
                if len(self.items) >= count:
                    break
                await self._changed.wait()

        try:
            await asyncio.wait_for(enough(), timeout)
        except asyncio.TimeoutError:
            pytest.fail(f"expected {count} item(s) within {timeout} s, got {self.items!r}")
        return list(self.items)


class Gate:
    """A coroutine handler awaits `wait` until the test `open` s it; `entered` says it is waiting."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.released = asyncio.Event()

    async def wait(self) -> None:
        self.entered.set()
        await self.released.wait()

    def open(self) -> None:
        self.released.set()


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


async def _echo(source: str, **kwargs: Any) -> Any:
    return {"source": source, "kwargs": kwargs}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _stuck_server(clients: Clients) -> tuple[Client, Gate]:
    """Client ``b``, started, whose route ``stuck`` waits until the returned gate opens."""
    gate = Gate()
    server = await clients("b", start=False)

    @server.route
    async def stuck(source: str) -> None:
        await gate.wait()

    await server.start(timeout=5)
    return server, gate


async def _raises(kind: type[BaseException] | tuple[type[BaseException], ...], call: Awaitable[Any]) -> BaseException:
    with pytest.raises(kind) as caught:
        await call
    return caught.value


# --- lifecycle ---------------------------------------------------------------------------------


@aio
async def test_start_and_close(hub: winerp.Hub) -> None:
    client = Client("alpha", port=hub.port)
    assert not client.is_ready
    assert not client.authorized
    await client.start(timeout=5)
    assert client.is_ready
    assert client.authorized
    assert not client.on_hold
    assert hub.clients == ["alpha"]
    await client.close()
    assert not client.is_ready
    await client.close()  # idempotent


@aio
async def test_context_manager(hub: winerp.Hub) -> None:
    async with Client("alpha", port=hub.port) as client:
        assert client.is_ready
        assert await client.ping()
    assert not client.is_ready


@aio
async def test_a_closed_client_cannot_start_again(hub: winerp.Hub) -> None:
    client = Client("alpha", port=hub.port)
    await client.start(timeout=5)
    await client.close()
    await _raises(errors.ClientNotReadyError, client.start(timeout=5))


@aio
async def test_names_and_repr(clients: Clients) -> None:
    client = await clients("alpha")
    assert client.name == client.local_name == "alpha"
    assert "alpha" in repr(client)


@aio
async def test_start_without_a_hub_raises_promptly() -> None:
    port = _free_port()
    for reconnect, timeout in ((False, 5.0), (True, 0.5)):
        client = Client("alpha", port=port, reconnect=reconnect)
        started = time.monotonic()
        error = await _raises(errors.WinerpError, client.start(timeout=timeout))
        # Refused without reconnect: at once; with reconnect: retried until the timeout.
        assert time.monotonic() - started < (PROMPT if not reconnect else timeout + PROMPT)
        assert isinstance(error, (ConnectionError, errors.RequestTimeout))
        await client.close()


@aio
async def test_no_winerp_thread_left_after_close(hub: winerp.Hub) -> None:
    def ours() -> list[str]:
        return [name for name in winerp_threads() if "leak-check" in name]

    first = Client("leak-check-a", port=hub.port)
    second = Client("leak-check-b", port=hub.port)

    @second.route
    def echo(source: str, value: Any) -> Any:  # a plain handler: runs on a worker thread
        return value

    @first.event
    def on_winerp_information(data: Any) -> None:  # a plain event: runs on the event thread
        pass

    await first.start(timeout=5)
    await second.start(timeout=5)
    assert await first.request("echo", "leak-check-b", value=1) == 1
    for number in range(500):  # a burst: its informs leave through the connection's flusher
        await second.inform(number, "leak-check-a")
    assert await first.ping()
    assert ours()
    await first.close()
    await second.close()
    assert ours() == []


# --- life cycle: deadlines, giving up, the reader's safety net -------------------------------------

#: How long `wait_until_ready` of a client that gave up may take to raise ("at once").
AT_ONCE = 1.0
GIVE_UP_CASES = ["start-timed-out", "no-reconnect", "refused-token", "closed", "closed-while-waiting"]


@aio
async def test_start_timeout_bounds_the_whole_opening_handshake() -> None:
    """A hub that answers the upgrade one byte every 0.5 s: each read is quick, the whole is not."""
    with slowloris_hub() as port:
        for reconnect in (True, False):
            client = Client("patient", port=port, reconnect=reconnect)
            started = time.monotonic()
            await _raises(errors.RequestTimeout, client.start(timeout=2))
            assert time.monotonic() - started < 2.5
            await client.close()


@aio
async def test_start_without_timeout_or_reconnect_makes_one_attempt() -> None:
    client = Client("once", port=free_port(), reconnect=False)
    started = time.monotonic()
    await _raises(errors.HubUnreachable, client.start())
    assert time.monotonic() - started < PROMPT
    await _eventually(lambda: "winerp-reader-once" not in winerp_threads())
    await client.close()


async def _given_up(case: str, hub: winerp.Hub) -> tuple[Client, type[errors.WinerpError]]:
    """A client that gave up in the way ``case`` names, and the error it gave up with."""
    if case == "start-timed-out":
        client = Client("quitter", port=free_port())
        await _raises(errors.HubUnreachable, client.start(timeout=0.5))
        return client, errors.HubUnreachable
    if case == "no-reconnect":
        client = Client("quitter", port=free_port(), reconnect=False)
        await _raises(errors.HubUnreachable, client.start())
        return client, errors.HubUnreachable
    if case == "refused-token":
        client = Client("quitter", port=hub.port, token="wrong")
        await _raises(errors.UnauthorizedError, client.start())
        return client, errors.UnauthorizedError
    client = Client("quitter", port=hub.port, token="right")
    await client.start(timeout=5)
    await client.close()
    return client, errors.ClientNotReadyError


@pytest.mark.parametrize("case", GIVE_UP_CASES)
@aio
async def test_wait_until_ready_raises_at_once_once_the_client_gave_up(case: str) -> None:
    with winerp.Hub(port=0, token="right") as hub:
        if case == "closed-while-waiting":
            # No hub answers: start() (no timeout) keeps trying until close() ends it; the
            # 1.x way, with start() as a task.
            client = Client("quitter", port=free_port())
            starting = asyncio.create_task(client.start())
            waiting = asyncio.create_task(client.wait_until_ready())
            await _eventually(lambda: "winerp-reader-quitter" in winerp_threads())
            closed_at = time.monotonic()
            await client.close()
            await _raises(errors.ClientNotReadyError, starting)
            await _raises(errors.ClientNotReadyError, waiting)
            assert time.monotonic() - closed_at < AT_ONCE
            return
        client, expected = await _given_up(case, hub)
        for timeout in (None, 30):
            started = time.monotonic()
            await _raises(expected, client.wait_until_ready(timeout=timeout))
            assert time.monotonic() - started < AT_ONCE
        await client.close()


@aio
async def test_unexpected_reader_error_is_logged_and_the_client_reconnects(
    clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = await clients("receiver")
    sender = await clients("sender")
    informs, readies = Recorder(), Recorder()

    @receiver.event
    async def on_winerp_information(data: Any) -> None:
        informs.add(data)

    @receiver.event
    async def on_winerp_ready() -> None:
        readies.add("ready")

    core = receiver._core
    original = core._on_information
    broken: list[bool] = []

    def fails_once(information: Any) -> None:
        if not broken:
            broken.append(True)
            raise RuntimeError("a bug in the reader")
        original(information)

    core._on_information = fails_once  # on this instance only; the socket is real
    with caplog.at_level(logging.INFO, logger="winerp"):
        await sender.inform("lost to the bug", "receiver")
        await readies.wait(1, timeout=10)  # connected and registered again, by itself
        await _eventually(lambda: receiver.is_ready)
        await sender.inform("after", "receiver")
        assert await informs.wait(1) == ["after"]
    failures = [r for r in caplog.records if r.exc_info and "a bug in the reader" in str(r.exc_info[1])]
    assert failures and failures[0].levelno == logging.ERROR, caplog.text
    assert "Traceback" in caplog.text and "fails_once" in caplog.text
    # The hub was told why: close code 1011.
    assert "left: it closed the connection (1011" in caplog.text, caplog.text
    assert "reconnected to" in caplog.text


async def _eventually(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


# --- routes ------------------------------------------------------------------------------------


@aio
async def test_route_in_all_four_forms(clients: Clients) -> None:
    server = await clients("server", start=False)

    @server.route
    async def bare(source: str) -> str:
        return "bare"

    @server.route()
    def called(source: str) -> str:
        return "called"

    @server.route("aliased")
    async def original_name(source: str) -> str:
        return "aliased"

    async def plain(source: str) -> str:
        return "plain"

    assert server.route(plain) is plain
    await server.start(timeout=5)
    caller = await clients("caller")
    for route in ("bare", "called", "aliased", "plain"):
        assert await caller.request(route, "server") == route


@aio
async def test_route_alias_exists_under_the_alias_only(clients: Clients) -> None:
    server = await clients("server")

    @server.route("alias")
    async def original(source: str) -> str:
        return "ok"

    await server.ping()  # the hub has the route once it answers this
    caller = await clients("caller")
    assert await caller.request("alias", "server") == "ok"
    await _raises(errors.RouteNotFound, caller.request("original", "server"))


@aio
async def test_routes_added_before_and_after_start(clients: Clients) -> None:
    server = await clients("server", start=False)

    @server.route("before")
    async def before(source: str) -> str:
        return "before"

    await server.start(timeout=5)

    @server.route("after")
    async def after(source: str) -> str:
        return "after"

    await server.ping()  # AddRoutes and this ping share one ordered connection
    caller = await clients("caller")
    assert await caller.request("before", "server") == "before"
    assert await caller.request("after", "server") == "after"


@aio
async def test_duplicate_route_raises_value_error(clients: Clients) -> None:
    server = await clients("server", start=False)
    server.route(_echo)
    with pytest.raises(ValueError):
        server.route(_echo)
    with pytest.raises(ValueError):
        server.route("_echo")(lambda source: None)
    await server.start(timeout=5)
    with pytest.raises(ValueError):
        server.route(_echo)


@aio
async def test_non_callable_route_raises_invalid_route_type(clients: Clients) -> None:
    server = await clients("server", start=False)
    with pytest.raises(errors.InvalidRouteType):
        server.route(42)  # type: ignore[call-overload]
    with pytest.raises(errors.InvalidRouteType):
        server.route("name")("not a function")  # type: ignore[type-var]
    with pytest.raises(errors.InvalidRouteType):
        server.route()(None)  # type: ignore[type-var]
    assert issubclass(errors.InvalidRouteType, errors.WinerpError)


@aio
async def test_decorated_function_stays_callable(clients: Clients) -> None:
    server = await clients("server", start=False)

    @server.route
    async def add(source: str, a: int, b: int) -> int:
        return a + b

    @server.route("alias")
    def other(source: str) -> str:
        return f"hello {source}"

    assert await add("me", a=1, b=2) == 3
    assert other("me") == "hello me"


# --- requests and informs ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES, ids=repr)
@aio
async def test_request_values_round_trip(clients: Clients, value: Any) -> None:
    server = await clients("server")
    server.route(_echo)
    await server.ping()
    caller = await clients("caller")
    assert await caller.request("_echo", "server", value=value, nested=[value, {"v": value}]) == {
        "source": "caller",
        "kwargs": {"value": value, "nested": [value, {"v": value}]},
    }


@aio
async def test_tuples_arrive_as_lists(clients: Clients) -> None:
    server = await clients("server", start=False)

    @server.route
    async def give(source: str, value: Any) -> Any:
        return (value, (1, 2))

    await server.start(timeout=5)
    caller = await clients("caller")
    assert await caller.request("give", "server", value=(3, (4,))) == [[3, [4]], [1, 2]]


@aio
async def test_request_with_no_arguments(clients: Clients) -> None:
    server = await clients("server", start=False)

    @server.route
    async def hello(source: str) -> str:
        return f"hello {source}"

    await server.start(timeout=5)
    caller = await clients("caller")
    assert await caller.request("hello", "server") == "hello caller"


def _informed(recorder: Recorder) -> Any:
    async def on_winerp_information(data: Any, source: str) -> None:
        recorder.add((data, source))

    return on_winerp_information


async def _receivers(clients: Clients, *names: str) -> tuple[dict[str, Client], dict[str, Recorder]]:
    made, received = {}, {}
    for name in names:
        received[name] = Recorder()
        made[name] = await clients(name, start=False)
        made[name].event(_informed(received[name]))
        await made[name].start(timeout=5)
    return made, received


@aio
async def test_inform_to_one_name(clients: Clients) -> None:
    _, received = await _receivers(clients, "b", "c")
    sender = await clients("a")
    await sender.inform({"n": 1}, "b")
    assert await received["b"].wait(1) == [({"n": 1}, "a")]
    # c got nothing: a later inform to c arrives alone.
    await sender.inform("marker", ["c"])
    assert await received["c"].wait(1) == [("marker", "a")]


@aio
async def test_inform_to_a_list(clients: Clients) -> None:
    _, received = await _receivers(clients, "b", "c", "d")
    sender = await clients("a")
    await sender.inform([1, 2], ["b", "c"])
    assert await received["b"].wait(1) == [([1, 2], "a")]
    assert await received["c"].wait(1) == [([1, 2], "a")]
    await sender.inform("marker", ("d",))
    assert await received["d"].wait(1) == [("marker", "a")]


@pytest.mark.parametrize("everyone", [None, []], ids=["None", "empty-list"])
@aio
async def test_inform_to_everyone(clients: Clients, everyone: Any) -> None:
    made, received = await _receivers(clients, "a", "b", "c")
    await made["a"].inform("all", everyone)
    assert await received["b"].wait(1) == [("all", "a")]
    assert await received["c"].wait(1) == [("all", "a")]
    # Never to the sender itself: a later inform from b reaches a first and alone.
    await made["b"].inform("marker", "a")
    assert await received["a"].wait(1) == [("marker", "b")]


@aio
async def test_inform_falsy_data_is_delivered(clients: Clients) -> None:
    _, received = await _receivers(clients, "b")
    sender = await clients("a")
    falsy: list[Any] = [{}, 0, "", [], False, None, b"", 0.0]
    for data in falsy:
        await sender.inform(data, "b")
    assert [data for data, _ in await received["b"].wait(len(falsy))] == falsy


@aio
async def test_a_burst_of_informs_arrives_whole_and_in_order(clients: Clients) -> None:
    # A burst leaves in batches (one write for many informs); a lone inform after it is
    # written at once, not held back for a batch.
    _, received = await _receivers(clients, "b")
    sender = await clients("a")
    burst = 3000
    for number in range(burst):
        await sender.inform(number, "b")
    assert [data for data, _ in await received["b"].wait(burst, timeout=30)] == list(range(burst))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await sender.inform("lone", "b")
    assert (await received["b"].wait(burst + 1))[-1] == ("lone", "a")
    assert time.monotonic() - started < PROMPT


@aio
async def test_inform_unencodable_raises_type_error(clients: Clients) -> None:
    await clients("b")
    sender = await clients("a")
    await _raises(TypeError, sender.inform(object(), "b"))


@aio
async def test_ping_hub_client_and_missing(clients: Clients) -> None:
    await clients("b")
    caller = await clients("a")
    assert await caller.ping() is True
    assert await caller.ping(None) is True
    assert await caller.ping("b") is True
    started = time.monotonic()
    assert await caller.ping("missing") is False
    assert time.monotonic() - started < PROMPT


@aio
async def test_peers(clients: Clients) -> None:
    caller = await clients("a")
    assert await caller.peers() == []
    await clients("c")
    other = await clients("b")
    assert await caller.peers() == ["b", "c"]
    assert await other.peers() == ["a", "c"]


@aio
async def test_peers_leave_out_clients_on_hold(clients: Clients) -> None:
    caller = await clients("a")
    await clients("b")
    held = await clients("b")
    assert held.on_hold
    assert await caller.peers() == ["b"]


# --- request_many --------------------------------------------------------------------------------


async def _double(source: str, x: int) -> int:
    return 2 * x


async def _server(clients: Clients, name: str, *routes: Callable[..., Any]) -> Client:
    server = await clients(name, start=False)
    for route in routes:
        server.route(route)
    await server.start(timeout=5)
    return server


@aio
async def test_request_many_with_sources(clients: Clients) -> None:
    for name in ("b", "c", "d"):
        await _server(clients, name, _double)
    caller = await clients("a")
    assert await caller.request_many("_double", ["b", "c"], x=21) == {"b": 42, "c": 42}
    assert await caller.request_many("_double", ("d",), x=1) == {"d": 2}
    assert await caller.request_many("_double", [], x=1) == {}


@aio
async def test_request_many_to_every_client_with_the_route(clients: Clients) -> None:
    for name in ("b", "c"):
        await _server(clients, name, _double)
    await clients("no-route")
    caller = await _server(clients, "a", _double)  # the caller's own route is not called
    assert await caller.request_many("_double", x=5) == {"b": 10, "c": 10}
    assert await caller.request_many("_double", None, x=6) == {"b": 12, "c": 12}
    assert await caller.request_many("unknown route") == {}


@aio
async def test_request_many_with_a_missing_one(clients: Clients) -> None:
    await _server(clients, "b", _double)
    caller = await clients("a")
    started = time.monotonic()
    results = await caller.request_many("_double", ["b", "ghost"], x=2)
    assert time.monotonic() - started < PROMPT
    assert results["b"] == 4
    assert isinstance(results["ghost"], errors.DestinationNotFound)
    assert sorted(results) == ["b", "ghost"]


@aio
async def test_request_many_with_a_raising_one(clients: Clients) -> None:
    await _server(clients, "b", _double)
    bad = await clients("c", start=False)

    @bad.route("_double")
    async def broken(source: str, x: int) -> int:
        raise ArithmeticError("no doubling today")

    await bad.start(timeout=5)
    results = await (await clients("a")).request_many("_double", x=2)
    assert results["b"] == 4
    assert isinstance(results["c"], errors.ClientRuntimeError)
    assert results["c"].remote_type == "ArithmeticError"


@aio
async def test_request_many_timeout(clients: Clients) -> None:
    gate = Gate()
    await _server(clients, "b", _double)
    slow = await clients("c", start=False)

    @slow.route("_double")
    async def stuck(source: str, x: int) -> int:
        await gate.wait()
        return 0

    await slow.start(timeout=5)
    caller = await clients("a")
    try:
        started = time.monotonic()
        results = await caller.request_many("_double", timeout=0.3, x=2)
        elapsed = time.monotonic() - started
    finally:
        gate.open()
    assert 0.25 < elapsed < 0.3 + PROMPT
    assert results["b"] == 4
    assert isinstance(results["c"], errors.RequestTimeout)


# --- errors ------------------------------------------------------------------------------------


@aio
async def test_destination_not_found_is_prompt(clients: Clients) -> None:
    caller = await clients("a")
    started = time.monotonic()
    await _raises(errors.DestinationNotFound, caller.request("anything", "ghost"))
    assert time.monotonic() - started < PROMPT


@aio
async def test_route_not_found_is_prompt(clients: Clients) -> None:
    await clients("b")
    caller = await clients("a")
    started = time.monotonic()
    await _raises(errors.RouteNotFound, caller.request("missing", "b"))
    assert time.monotonic() - started < PROMPT


@aio
async def test_remote_error_is_client_runtime_error(clients: Clients) -> None:
    server = await clients("b", start=False)

    @server.route
    async def explode(source: str, value: int) -> None:
        raise ValueError(f"bad value {value}")

    await server.start(timeout=5)
    caller = await clients("a")
    started = time.monotonic()
    error = await _raises(errors.ClientRuntimeError, caller.request("explode", "b", value=42))
    assert time.monotonic() - started < PROMPT
    assert isinstance(error, errors.ClientRuntimeError)
    assert not isinstance(error, ValueError)  # remote errors stay distinct from local ones
    assert error.remote_type == "ValueError"
    assert error.remote_message == "bad value 42"
    assert "Traceback" in error.remote_traceback
    assert "explode" in error.remote_traceback
    assert "ValueError: bad value 42" in error.remote_traceback


@aio
async def test_unencodable_return_value_is_a_remote_error(clients: Clients) -> None:
    server = await clients("b", start=False)

    @server.route
    async def opaque(source: str) -> object:
        return object()

    await server.start(timeout=5)
    caller = await clients("a")
    error = await _raises(errors.ClientRuntimeError, caller.request("opaque", "b"))
    assert isinstance(error, errors.ClientRuntimeError)
    assert error.remote_type == "TypeError"


@aio
async def test_not_ready_before_start(hub: winerp.Hub) -> None:
    client = Client("a", port=hub.port)
    for call in (
        client.request("r", "b"),
        client.inform("x", "b"),
        client.ping(),
        client.peers(),
        client.request_many("r", ["b"]),
    ):
        await _raises(errors.ClientNotReadyError, call)
    await client.close()


@aio
async def test_not_ready_while_on_hold(clients: Clients) -> None:
    await clients("b")
    await clients("a")
    held = await clients("a")
    assert held.on_hold
    assert not held.is_ready
    for call in (held.request("r", "b"), held.inform("x", "b"), held.ping(), held.peers()):
        started = time.monotonic()
        await _raises(errors.ClientNotReadyError, call)
        assert time.monotonic() - started < PROMPT


@aio
async def test_request_timeout_is_a_timeout_error(clients: Clients) -> None:
    _, gate = await _stuck_server(clients)
    caller = await clients("a")
    try:
        started = time.monotonic()
        error = await _raises(TimeoutError, caller.request("stuck", "b", timeout=0.2))
        elapsed = time.monotonic() - started
    finally:
        gate.open()
    assert isinstance(error, errors.RequestTimeout)
    assert 0.15 < elapsed < 0.2 + PROMPT
    assert await caller.ping("b")  # the late answer is dropped; the client keeps working


@aio
async def test_submit_returns_futures_of_the_answers_in_flight_together(clients: Clients) -> None:
    server = await clients("b", start=False)
    gate = Gate()

    @server.route
    async def double(source: str, number: int) -> int:
        if number == 0:
            await gate.wait()  # the first answer waits until every request is in flight
        return 2 * number

    await server.start(timeout=5)
    caller = await clients("a")
    futures = [caller.submit("double", "b", number=number) for number in range(50)]
    await asyncio.wait_for(gate.entered.wait(), 5)
    assert not futures[0].done()
    gate.open()
    assert await asyncio.wait_for(asyncio.gather(*futures), 5) == [2 * number for number in range(50)]
    dropped = caller.submit("double", "b", number=1)
    dropped.cancel()  # the answer is dropped quietly; the client keeps working
    assert await caller.request("double", "b", number=2) == 4


@aio
async def test_submit_errors_arrive_in_the_future(clients: Clients) -> None:
    server = await clients("b", start=False)

    @server.route
    async def fails(source: str) -> None:
        raise ValueError("no")

    await server.start(timeout=5)
    caller = await clients("a")
    missing = caller.submit("fails", "nobody")
    unknown = caller.submit("no_such_route", "b")
    raising = caller.submit("fails", "b")
    await _raises(errors.DestinationNotFound, missing)
    await _raises(errors.RouteNotFound, unknown)
    error = await _raises(errors.ClientRuntimeError, raising)
    assert isinstance(error, errors.ClientRuntimeError) and error.remote_type == "ValueError"
    with pytest.raises(errors.ClientNotReadyError):
        (await clients("c", start=False)).submit("fails", "b")


@aio
async def test_submit_times_out_by_itself_when_nobody_waits(clients: Clients) -> None:
    _, gate = await _stuck_server(clients)
    caller = await clients("a")
    started = time.monotonic()
    future = caller.submit("stuck", "b", timeout=0.3)
    try:
        done = asyncio.Event()
        future.add_done_callback(lambda _: done.set())
        await asyncio.wait_for(done.wait(), 5)  # nobody awaited it: the client ended it
        elapsed = time.monotonic() - started
    finally:
        gate.open()
    assert isinstance(future.exception(), errors.RequestTimeout)
    assert 0.25 < elapsed < 0.3 + PROMPT
    assert await caller.ping("b")  # the late answer is dropped; the client keeps working


@aio
async def test_unencodable_arguments_raise_type_error_and_send_nothing(clients: Clients) -> None:
    calls = Recorder()
    server = await clients("b", start=False)

    @server.route
    async def record(source: str, **kwargs: Any) -> None:
        calls.add(kwargs)

    await server.start(timeout=5)
    caller = await clients("a")
    await _raises(TypeError, caller.request("record", "b", value=object()))
    await _raises(TypeError, caller.request("record", "b", value=[1, {"x": object()}]))
    await caller.request("record", "b", value="sent")
    assert calls.items == [{"value": "sent"}]


@aio
async def test_payload_too_large() -> None:
    limit = 64 * 1024
    with winerp.Hub(port=0, max_message_size=limit) as small_hub:
        server = Client("b", port=small_hub.port)
        caller = Client("a", port=small_hub.port)

        @server.route
        async def big(source: str, size: int) -> bytes:
            return b"x" * size

        @server.route
        async def length(source: str, data: bytes) -> int:
            return len(data)

        async with server, caller:
            await _raises(errors.PayloadTooLarge, caller.request("length", "b", data=b"x" * (2 * limit)))
            await _raises(errors.PayloadTooLarge, caller.inform(b"x" * (2 * limit), "b"))
            started = time.monotonic()
            error = await _raises(
                (errors.PayloadTooLarge, errors.ClientRuntimeError), caller.request("big", "b", size=2 * limit)
            )
            assert time.monotonic() - started < PROMPT
            assert "PayloadTooLarge" in repr(error) or "limit" in str(error)
            # Everyone keeps working.
            assert await caller.request("length", "b", data=b"x" * 1000) == 1000
            assert await caller.request("big", "b", size=10) == b"x" * 10
            assert small_hub.clients == ["a", "b"]


@aio
async def test_client_max_message_size_is_enforced(clients: Clients) -> None:
    server = await clients("b", start=False)

    @server.route
    async def length(source: str, data: bytes) -> int:
        return len(data)

    await server.start(timeout=5)
    caller = await clients("a", max_message_size=4096)
    assert await caller.request("length", "b", data=b"x" * 1000) == 1000
    await _raises(errors.PayloadTooLarge, caller.request("length", "b", data=b"x" * 10_000))


@aio
async def test_handler_can_call_back_into_its_caller(clients: Clients) -> None:
    outer = await clients("outer", start=False)
    inner = await clients("inner", start=False)

    @outer.route
    async def name_twice(source: str) -> str:
        return 2 * source

    @inner.route
    async def ask_back(source: str, depth: int) -> Any:
        return [await inner.request("name_twice", source), depth]

    await outer.start(timeout=5)
    await inner.start(timeout=5)
    assert await outer.request("ask_back", "inner", depth=1, timeout=5) == ["innerinner", 1]


# --- events ------------------------------------------------------------------------------------


def _named(name: str, function: Callable[[], None]) -> Any:
    async def handler(*args: Any) -> None:
        function()

    handler.__name__ = name
    return handler


@aio
async def test_connect_comes_before_ready(hub: winerp.Hub) -> None:
    seen = Recorder()
    client = Client("a", port=hub.port)

    @client.event
    async def on_winerp_connect() -> None:
        seen.add("connect")

    @client.event
    async def on_winerp_ready() -> None:
        seen.add("ready")

    async with client:
        assert await seen.wait(2) == ["connect", "ready"]


@aio
async def test_on_winerp_request_gets_source_and_route(clients: Clients) -> None:
    seen = Recorder()
    server = await clients("b", start=False)
    server.route(_echo)

    @server.event
    async def on_winerp_request(source: str, route: str) -> None:
        seen.add((source, route))

    await server.start(timeout=5)
    await (await clients("a")).request("_echo", "b")
    assert await seen.wait(1) == [("a", "_echo")]


@aio
async def test_on_winerp_error_fires_in_the_handlers_client(clients: Clients) -> None:
    server_errors, caller_errors = Recorder(), Recorder()
    server = await clients("b", start=False)

    @server.route
    async def explode(source: str) -> None:
        raise KeyError("missing thing")

    @server.event
    async def on_winerp_error(error: BaseException) -> None:
        server_errors.add(error)

    await server.start(timeout=5)
    caller = await clients("a", start=False)
    caller.event(_named("on_winerp_error", lambda: caller_errors.add("error")))
    await caller.start(timeout=5)
    await _raises(errors.ClientRuntimeError, caller.request("explode", "b"))
    (error,) = await server_errors.wait(1)
    assert isinstance(error, KeyError)
    assert caller_errors.items == []


@aio
async def test_on_winerp_response_fires_in_the_requester(clients: Clients) -> None:
    caller_responses, server_responses = Recorder(), Recorder()
    server = await clients("b", start=False)
    server.route(_echo)
    server.event(_named("on_winerp_response", lambda: server_responses.add("response")))
    await server.start(timeout=5)
    caller = await clients("a", start=False)
    caller.event(_named("on_winerp_response", lambda: caller_responses.add("response")))
    await caller.start(timeout=5)
    await caller.request("_echo", "b")
    assert await caller_responses.wait(1) == ["response"]
    assert server_responses.items == []


@aio
async def test_on_winerp_information_gets_data_and_source(clients: Clients) -> None:
    seen = Recorder()
    receiver = await clients("b", start=False)

    @receiver.event
    async def on_winerp_information(data: Any, source: str) -> None:
        seen.add((data, source))

    await receiver.start(timeout=5)
    await (await clients("a")).inform({"k": [1, b"2"]}, "b")
    assert await seen.wait(1) == [({"k": [1, b"2"]}, "a")]


@aio
async def test_event_handlers_may_take_fewer_parameters(clients: Clients) -> None:
    seen = Recorder()
    server = await clients("b", start=False)

    @server.route
    async def explode(source: str) -> None:
        raise RuntimeError("x")

    @server.event
    async def on_winerp_request() -> None:
        seen.add("request")

    @server.event
    def on_winerp_error() -> None:  # plain handlers too
        seen.add("error")

    @server.event
    async def on_winerp_information(data: Any) -> None:
        seen.add(("information", data))

    await server.start(timeout=5)
    caller = await clients("a")
    await _raises(errors.ClientRuntimeError, caller.request("explode", "b"))
    await caller.inform("data", "b")
    assert sorted(map(str, await seen.wait(3))) == sorted(map(str, ["request", "error", ("information", "data")]))


@aio
async def test_unknown_event_raises_name_error(clients: Clients) -> None:
    client = await clients("a", start=False)
    with pytest.raises(NameError):

        @client.event
        async def on_winerp_something_else() -> None:
            pass

    with pytest.raises(NameError):
        client.event(lambda: None)


@aio
async def test_peer_join_and_leave(clients: Clients) -> None:
    seen = Recorder()
    watcher = await clients("a", start=False)

    @watcher.event
    async def on_winerp_peer_join(name: str) -> None:
        seen.add(("join", name))

    @watcher.event
    async def on_winerp_peer_leave(name: str) -> None:
        seen.add(("leave", name))

    await watcher.start(timeout=5)
    other = await clients("b")
    assert await seen.wait(1) == [("join", "b")]
    await other.close()
    assert await seen.wait(2) == [("join", "b"), ("leave", "b")]


@aio
async def test_a_raising_event_handler_is_logged_and_the_client_keeps_working(
    clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    seen = Recorder()
    receiver = await clients("b", start=False)

    @receiver.event
    async def on_winerp_information(data: Any) -> None:
        if data == "raise":
            raise RuntimeError("handler bug")
        seen.add(data)

    await receiver.start(timeout=5)
    sender = await clients("a")
    with caplog.at_level(logging.ERROR, logger="winerp"):
        await sender.inform("raise", "b")
        await sender.inform("after", "b")
        assert await seen.wait(1) == ["after"]
    assert any("handler bug" in (record.exc_text or "") for record in caplog.records)


# --- state -------------------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["is_ready", "authorized", "on_hold", "name", "local_name"])
@aio
async def test_read_only_properties(clients: Clients, attribute: str) -> None:
    client = await clients("a")
    before = getattr(client, attribute)
    with pytest.raises(AttributeError):
        setattr(client, attribute, not before if isinstance(before, bool) else "other")
    assert getattr(client, attribute) == before


# --- names on hold -----------------------------------------------------------------------------


@aio
async def test_second_client_with_the_same_name_is_on_hold(clients: Clients) -> None:
    holder = await clients("name")
    await _server(clients, "b", _echo)
    ready = Recorder()
    waiter = await clients("name", start=False)
    waiter.event(_named("on_winerp_ready", lambda: ready.add("ready")))
    started = time.monotonic()
    await waiter.start(timeout=5)  # returns while on hold
    assert time.monotonic() - started < PROMPT
    assert waiter.on_hold
    assert not waiter.is_ready
    await _raises(errors.ClientNotReadyError, waiter.request("_echo", "b"))
    await _raises(errors.RequestTimeout, waiter.wait_until_ready(timeout=0.05))
    assert ready.items == []

    await holder.close()
    await waiter.wait_until_ready(timeout=5)
    assert await ready.wait(1) == ["ready"]
    assert waiter.is_ready
    assert not waiter.on_hold
    assert await waiter.request("_echo", "b") == {"source": "name", "kwargs": {}}


def _constant(value: Any) -> Any:
    async def handler(source: str) -> Any:
        return value

    return handler


@aio
async def test_several_waiters_take_over_in_arrival_order(clients: Clients) -> None:
    holder = await clients("name", start=False)
    holder.route("whoami")(_constant("holder"))
    await holder.start(timeout=5)
    waiters = []
    for index in range(3):
        waiter = await clients("name", start=False)
        waiter.route("whoami")(_constant(f"waiter-{index}"))
        await waiter.start(timeout=5)
        assert waiter.on_hold
        waiters.append(waiter)
    caller = await clients("caller")
    assert await caller.request("whoami", "name") == "holder"
    previous = holder
    for index, waiter in enumerate(waiters):
        await previous.close()
        await waiter.wait_until_ready(timeout=5)
        assert all(w.on_hold for w in waiters[index + 1 :])
        assert await caller.request("whoami", "name") == f"waiter-{index}"
        previous = waiter


@aio
async def test_wait_until_ready(clients: Clients) -> None:
    client = await clients("a")
    await client.wait_until_ready()
    await client.wait_until_ready(timeout=0.01)


# --- in flight, concurrency ----------------------------------------------------------------------


@aio
async def test_close_fails_in_flight_requests_with_connection_lost(clients: Clients) -> None:
    _, gate = await _stuck_server(clients)
    caller = await clients("a")
    call = asyncio.create_task(caller.request("stuck", "b", timeout=30))
    try:
        await asyncio.wait_for(gate.entered.wait(), 5)
        started = time.monotonic()
        await caller.close()
        error = await _raises(errors.ConnectionLost, asyncio.wait_for(call, PROMPT))
        assert time.monotonic() - started < PROMPT
        assert isinstance(error, ConnectionError)
    finally:
        gate.open()


@aio
async def test_peer_disconnected_when_the_destination_leaves(clients: Clients) -> None:
    server, gate = await _stuck_server(clients)
    caller = await clients("a")
    call = asyncio.create_task(caller.request("stuck", "b", timeout=30))
    try:
        await asyncio.wait_for(gate.entered.wait(), 5)
        await server.close()
        await _raises(errors.PeerDisconnected, asyncio.wait_for(call, PROMPT))
    finally:
        gate.open()


@aio
async def test_concurrent_requests_match_their_answers(clients: Clients) -> None:
    server = await clients("b", start=False)

    @server.route
    async def echo(source: str, worker: int, n: int) -> list[Any]:
        return [source, worker, n]

    await server.start(timeout=5)
    caller = await clients("a")
    failures: list[Any] = []

    async def work(worker: int) -> None:
        for n in range(200):
            answer = await caller.request("echo", "b", worker=worker, n=n, timeout=30)
            if answer != ["a", worker, n]:
                failures.append((worker, n, answer))

    await asyncio.wait_for(asyncio.gather(*(work(worker) for worker in range(16))), 60)
    assert failures == []


# --- asyncio only ------------------------------------------------------------------------------


@aio
async def test_coroutine_and_plain_handlers(clients: Clients) -> None:
    loop_thread = threading.current_thread()
    release = threading.Event()
    server = await clients("b", start=False)

    @server.route
    async def on_loop(source: str) -> bool:
        return threading.current_thread() is loop_thread

    @server.route
    def blocking(source: str) -> bool:
        # A plain handler runs in a worker thread, so blocking here never blocks the loop.
        release.wait(10)
        return threading.current_thread() is not loop_thread

    await server.start(timeout=5)
    caller = await clients("a")
    slow = asyncio.create_task(caller.request("blocking", "b"))
    try:
        # The loop (which serves the coroutine handler) keeps running meanwhile.
        assert await caller.request("on_loop", "b") is True
        assert not slow.done()
    finally:
        release.set()
    assert await slow is True


@aio
async def test_cancelled_request_is_dropped_quietly(
    hub: winerp.Hub, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    loop_errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: loop_errors.append(context))
    gate = Gate()
    server = await clients("b", start=False)

    @server.route
    async def slow(source: str) -> str:
        await gate.wait()
        return "late"

    server.route(_echo)
    await server.start(timeout=5)
    caller = await clients("a")
    with caplog.at_level(logging.DEBUG, logger="winerp"):
        call = asyncio.create_task(caller.request("slow", "b"))
        await asyncio.wait_for(gate.entered.wait(), 5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        gate.open()

        # The late reply reaches the hub, then the caller, which drops it.
        def answered() -> bool:
            return all(c["in_flight"] == 0 for c in hub.status()["clients"] if c["name"] == "a")

        deadline = time.monotonic() + 5
        while not answered():
            assert time.monotonic() < deadline, "the late reply never went through the hub"
            await asyncio.sleep(0.01)
        assert await caller.ping()  # after the reply on the same connection: it has been read
        assert await caller.request("_echo", "b", x=1) == {"source": "a", "kwargs": {"x": 1}}
    assert loop_errors == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@aio
async def test_start_as_a_task_then_wait_until_ready(hub: winerp.Hub) -> None:
    client = Client("a", port=hub.port)
    task = asyncio.create_task(client.start())
    try:
        await client.wait_until_ready(timeout=5)
        assert client.is_ready
        assert await client.ping()
        await task
    finally:
        await client.close()


def test_winerp_client_is_the_aio_client() -> None:
    assert winerp.Client is winerp.aio.Client
    from winerp import Client as Imported

    assert Imported is winerp.aio.Client


# --- first-day edges: error text, peers with routes --------------------------------------------


@aio
async def test_remote_error_str_begins_with_the_remote_type(clients: Clients) -> None:
    server = await clients("b", start=False)

    @server.route
    async def fail(source: str, kind: str, user_id: int = 0) -> None:
        if kind == "value":
            raise ValueError(f"bad user id {user_id}")
        if kind == "key":
            raise KeyError("user")
        raise RuntimeError

    await server.start(timeout=5)
    caller = await clients("a")
    texts = []
    for kind in ("value", "key", "bare"):
        error = await _raises(errors.ClientRuntimeError, caller.request("fail", "b", kind=kind, user_id=42))
        texts.append(str(error))
    assert texts == ["ValueError: bad user id 42", "KeyError: 'user'", "RuntimeError"]
    assert isinstance(error, errors.ClientRuntimeError)
    assert error.remote_message == ""  # the parts stay as they were


@aio
async def test_peers_with_routes(clients: Clients, hub: winerp.Hub) -> None:
    server = await clients("b", start=False)
    server.route(_double)
    server.route("alias")(_echo)
    await server.start(timeout=5)
    caller = await clients("a", start=False)
    caller.route(_echo)  # its own routes are not listed: it is not its own peer
    await caller.start(timeout=5)
    assert (await clients("b")).on_hold  # a held client is no peer either
    assert await caller.peers(routes=True) == {"b": ["_double", "alias"]}

    @server.route
    async def late(source: str) -> None:
        pass

    assert await server.ping()  # the hub reads the new route before it answers this ping
    legacy = raw_ws(hub.port, native=False)  # a winerp 1.x client: its routes are unknown
    try:
        legacy.send('{"type": 1, "id": "old", "uuid": "u"}')
        legacy.recv()
        assert await caller.peers(5, True) == {"b": ["_double", "alias", "late"], "old": []}
        assert await caller.peers() == await caller.peers(routes=False) == ["b", "old"]
    finally:
        legacy.close()
