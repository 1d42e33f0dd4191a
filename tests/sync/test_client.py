"""winerp.sync.Client against a real hub on a free port.

tests/aio/test_client.py holds the same test names for winerp.aio.Client: a behaviour is
tested in both or it is a facade-specific extra (listed in tests/test_parity.py).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import winerp
from winerp import errors
from winerp.sync import Client

try:
    from conftest import wait_for, winerp_threads
    from lifecycle_tools import free_port, slowloris_hub
    from security_tools import raw_ws
except ImportError:  # tests/ is a package
    from tests.conftest import wait_for, winerp_threads
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


class Recorder:
    """Collects what handlers see, from any thread; `wait` blocks until enough arrived."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def add(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait(self, count: int = 1, timeout: float = 5.0) -> list[Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.items) >= count, timeout):
                pytest.fail(f"expected {count} item(s) within {timeout} s, got {self.items!r}")
            return list(self.items)


class Gate:
    """A handler blocks on `wait` until the test `open` s it; `entered` tells the test it is blocked."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.released = threading.Event()

    def wait(self) -> None:
        self.entered.set()
        self.released.wait(30)

    def open(self) -> None:
        self.released.set()


@pytest.fixture
def clients(hub: winerp.Hub) -> Iterator[Any]:
    """A factory of clients on the hub; every client made is closed after the test."""
    made: list[Client] = []

    def make(name: str, *, start: bool = True, **options: Any) -> Client:
        client = Client(name, port=hub.port, **options)
        made.append(client)
        if start:
            client.start(timeout=5)
        return client

    yield make
    for client in made:
        client.close()


def _echo(source: str, **kwargs: Any) -> Any:
    return {"source": source, "kwargs": kwargs}


def _stuck_server(clients: Any) -> tuple[Client, Gate]:
    """Client ``b``, started, whose route ``stuck`` blocks until the returned gate opens."""
    gate = Gate()
    server = clients("b", start=False)

    @server.route
    def stuck(source: str) -> None:
        gate.wait()

    server.start(timeout=5)
    return server, gate


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- lifecycle ---------------------------------------------------------------------------------


def test_start_and_close(hub: winerp.Hub) -> None:
    client = Client("alpha", port=hub.port)
    assert not client.is_ready
    assert not client.authorized
    client.start(timeout=5)
    assert client.is_ready
    assert client.authorized
    assert not client.on_hold
    assert hub.clients == ["alpha"]
    client.close()
    assert not client.is_ready
    client.close()  # idempotent


def test_context_manager(hub: winerp.Hub) -> None:
    with Client("alpha", port=hub.port) as client:
        assert client.is_ready
        assert client.ping()
    assert not client.is_ready


def test_a_closed_client_cannot_start_again(hub: winerp.Hub) -> None:
    client = Client("alpha", port=hub.port)
    client.start(timeout=5)
    client.close()
    with pytest.raises(errors.ClientNotReadyError):
        client.start(timeout=5)


def test_names_and_repr(clients: Any) -> None:
    client = clients("alpha")
    assert client.name == client.local_name == "alpha"
    assert "alpha" in repr(client)


def test_start_without_a_hub_raises_promptly() -> None:
    port = _free_port()
    for reconnect, timeout in ((False, 5.0), (True, 0.5)):
        client = Client("alpha", port=port, reconnect=reconnect)
        started = time.monotonic()
        with pytest.raises(errors.WinerpError) as caught:
            client.start(timeout=timeout)
        # Refused without reconnect: at once; with reconnect: retried until the timeout.
        assert time.monotonic() - started < (PROMPT if not reconnect else timeout + PROMPT)
        assert isinstance(caught.value, (ConnectionError, errors.RequestTimeout))
        client.close()


def test_no_winerp_thread_left_after_close(hub: winerp.Hub) -> None:
    def ours() -> list[str]:
        return [name for name in winerp_threads() if "leak-check" in name]

    first = Client("leak-check-a", port=hub.port)
    second = Client("leak-check-b", port=hub.port)

    @second.route
    def echo(source: str, value: Any) -> Any:
        return value

    @first.event
    def on_winerp_information(data: Any) -> None:
        pass

    first.start(timeout=5)
    second.start(timeout=5)
    assert first.request("echo", "leak-check-b", value=1) == 1
    for number in range(500):  # a burst: its informs leave through the connection's flusher
        second.inform(number, "leak-check-a")
    assert first.ping()
    assert ours()
    first.close()
    second.close()
    assert ours() == []


# --- life cycle: deadlines, giving up, the reader's safety net -------------------------------------

#: How long `wait_until_ready` of a client that gave up may take to raise ("at once").
AT_ONCE = 1.0
GIVE_UP_CASES = ["start-timed-out", "no-reconnect", "refused-token", "closed", "closed-while-waiting"]


def test_start_timeout_bounds_the_whole_opening_handshake() -> None:
    """A hub that answers the upgrade one byte every 0.5 s: each read is quick, the whole is not."""
    with slowloris_hub() as port:
        for reconnect in (True, False):
            client = Client("patient", port=port, reconnect=reconnect)
            started = time.monotonic()
            with pytest.raises(errors.RequestTimeout):
                client.start(timeout=2)
            assert time.monotonic() - started < 2.5
            client.close()


def test_start_without_timeout_or_reconnect_makes_one_attempt() -> None:
    client = Client("once", port=free_port(), reconnect=False)
    started = time.monotonic()
    with pytest.raises(errors.HubUnreachable):
        client.start()
    assert time.monotonic() - started < PROMPT
    wait_for(lambda: "winerp-reader-once" not in winerp_threads(), timeout=3)
    client.close()


def _given_up(case: str, hub: winerp.Hub) -> tuple[Client, type[errors.WinerpError]]:
    """A client that gave up in the way ``case`` names, and the error it gave up with."""
    if case == "start-timed-out":
        client = Client("quitter", port=free_port())
        with pytest.raises(errors.HubUnreachable):
            client.start(timeout=0.5)
        return client, errors.HubUnreachable
    if case == "no-reconnect":
        client = Client("quitter", port=free_port(), reconnect=False)
        with pytest.raises(errors.HubUnreachable):
            client.start()
        return client, errors.HubUnreachable
    if case == "refused-token":
        client = Client("quitter", port=hub.port, token="wrong")
        with pytest.raises(errors.UnauthorizedError):
            client.start()
        return client, errors.UnauthorizedError
    client = Client("quitter", port=hub.port, token="right")
    client.start(timeout=5)
    client.close()
    return client, errors.ClientNotReadyError


@pytest.mark.parametrize("case", GIVE_UP_CASES)
def test_wait_until_ready_raises_at_once_once_the_client_gave_up(case: str) -> None:
    with winerp.Hub(port=0, token="right") as hub:
        if case == "closed-while-waiting":
            # No hub answers: start() (no timeout) keeps trying until close() ends it.
            client = Client("quitter", port=free_port())
            outcomes: dict[str, BaseException] = {}

            def run(name: str, call: Callable[[], None]) -> None:
                try:
                    call()
                except BaseException as exc:  # noqa: BLE001 - inspected below
                    outcomes[name] = exc

            threads = [
                threading.Thread(target=run, args=("start", client.start)),
                threading.Thread(target=run, args=("wait", client.wait_until_ready)),
            ]
            for thread in threads:
                thread.start()
            wait_for(lambda: "winerp-reader-quitter" in winerp_threads())
            closed_at = time.monotonic()
            client.close()
            for thread in threads:
                thread.join(5)
            assert time.monotonic() - closed_at < AT_ONCE
            assert isinstance(outcomes["start"], errors.ClientNotReadyError), outcomes
            assert isinstance(outcomes["wait"], errors.ClientNotReadyError), outcomes
            return
        client, expected = _given_up(case, hub)
        for timeout in (None, 30):
            started = time.monotonic()
            with pytest.raises(expected):
                client.wait_until_ready(timeout=timeout)
            assert time.monotonic() - started < AT_ONCE
        client.close()


def test_unexpected_reader_error_is_logged_and_the_client_reconnects(
    clients: Any, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = clients("receiver")
    sender = clients("sender")
    informs, readies = Recorder(), Recorder()

    @receiver.event
    def on_winerp_information(data: Any) -> None:
        informs.add(data)

    @receiver.event
    def on_winerp_ready() -> None:
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
        sender.inform("lost to the bug", "receiver")
        readies.wait(1, timeout=10)  # connected and registered again, by itself
        wait_for(lambda: receiver.is_ready)
        sender.inform("after", "receiver")
        assert informs.wait(1) == ["after"]
    failures = [r for r in caplog.records if r.exc_info and "a bug in the reader" in str(r.exc_info[1])]
    assert failures and failures[0].levelno == logging.ERROR, caplog.text
    assert "Traceback" in caplog.text and "fails_once" in caplog.text
    # The hub was told why: close code 1011.
    assert "left: it closed the connection (1011" in caplog.text, caplog.text
    assert "reconnected to" in caplog.text


# --- routes ------------------------------------------------------------------------------------


def test_route_in_all_four_forms(clients: Any) -> None:
    server = clients("server", start=False)

    @server.route
    def bare(source: str) -> str:
        return "bare"

    @server.route()
    def called(source: str) -> str:
        return "called"

    @server.route("aliased")
    def original_name(source: str) -> str:
        return "aliased"

    def plain(source: str) -> str:
        return "plain"

    assert server.route(plain) is plain
    server.start(timeout=5)
    caller = clients("caller")
    for route in ("bare", "called", "aliased", "plain"):
        assert caller.request(route, "server") == route


def test_route_alias_exists_under_the_alias_only(clients: Any) -> None:
    server = clients("server")

    @server.route("alias")
    def original(source: str) -> str:
        return "ok"

    server.ping()  # the hub has the route once it answers this
    caller = clients("caller")
    assert caller.request("alias", "server") == "ok"
    with pytest.raises(errors.RouteNotFound):
        caller.request("original", "server")


def test_routes_added_before_and_after_start(clients: Any) -> None:
    server = clients("server", start=False)

    @server.route("before")
    def before(source: str) -> str:
        return "before"

    server.start(timeout=5)

    @server.route("after")
    def after(source: str) -> str:
        return "after"

    server.ping()  # AddRoutes and this ping share one ordered connection
    caller = clients("caller")
    assert caller.request("before", "server") == "before"
    assert caller.request("after", "server") == "after"


def test_duplicate_route_raises_value_error(clients: Any) -> None:
    server = clients("server", start=False)
    server.route(_echo)
    with pytest.raises(ValueError):
        server.route(_echo)
    with pytest.raises(ValueError):
        server.route("_echo")(lambda source: None)
    server.start(timeout=5)
    with pytest.raises(ValueError):
        server.route(_echo)


def test_non_callable_route_raises_invalid_route_type(clients: Any) -> None:
    server = clients("server", start=False)
    with pytest.raises(errors.InvalidRouteType):
        server.route(42)
    with pytest.raises(errors.InvalidRouteType):
        server.route("name")("not a function")
    with pytest.raises(errors.InvalidRouteType):
        server.route()(None)
    assert issubclass(errors.InvalidRouteType, errors.WinerpError)


def test_decorated_function_stays_callable(clients: Any) -> None:
    server = clients("server", start=False)

    @server.route
    def add(source: str, a: int, b: int) -> int:
        return a + b

    @server.route("alias")
    def other(source: str) -> str:
        return f"hello {source}"

    assert add("me", a=1, b=2) == 3
    assert other("me") == "hello me"


# --- requests and informs ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES, ids=repr)
def test_request_values_round_trip(clients: Any, value: Any) -> None:
    server = clients("server")
    server.route(_echo)
    server.ping()
    caller = clients("caller")
    assert caller.request("_echo", "server", value=value, nested=[value, {"v": value}]) == {
        "source": "caller",
        "kwargs": {"value": value, "nested": [value, {"v": value}]},
    }


def test_tuples_arrive_as_lists(clients: Any) -> None:
    server = clients("server", start=False)

    @server.route
    def give(source: str, value: Any) -> Any:
        return (value, (1, 2))

    server.start(timeout=5)
    assert clients("caller").request("give", "server", value=(3, (4,))) == [[3, [4]], [1, 2]]


def test_request_with_no_arguments(clients: Any) -> None:
    server = clients("server", start=False)

    @server.route
    def hello(source: str) -> str:
        return f"hello {source}"

    server.start(timeout=5)
    assert clients("caller").request("hello", "server") == "hello caller"


def test_inform_to_one_name(clients: Any) -> None:
    received = {name: Recorder() for name in ("b", "c")}
    for name, recorder in received.items():
        receiver = clients(name, start=False)
        receiver.event(_informed(recorder))
        receiver.start(timeout=5)
    sender = clients("a")
    sender.inform({"n": 1}, "b")
    assert received["b"].wait(1) == [({"n": 1}, "a")]
    # c got nothing: a later inform to c arrives alone.
    sender.inform("marker", ["c"])
    assert received["c"].wait(1) == [("marker", "a")]


def test_inform_to_a_list(clients: Any) -> None:
    received = {name: Recorder() for name in ("b", "c", "d")}
    for name, recorder in received.items():
        receiver = clients(name, start=False)
        receiver.event(_informed(recorder))
        receiver.start(timeout=5)
    sender = clients("a")
    sender.inform([1, 2], ["b", "c"])
    assert received["b"].wait(1) == [([1, 2], "a")]
    assert received["c"].wait(1) == [([1, 2], "a")]
    sender.inform("marker", ("d",))
    assert received["d"].wait(1) == [("marker", "a")]


@pytest.mark.parametrize("everyone", [None, []], ids=["None", "empty-list"])
def test_inform_to_everyone(clients: Any, everyone: Any) -> None:
    received = {name: Recorder() for name in ("a", "b", "c")}
    started = {}
    for name, recorder in received.items():
        started[name] = clients(name, start=False)
        started[name].event(_informed(recorder))
        started[name].start(timeout=5)
    started["a"].inform("all", everyone)
    assert received["b"].wait(1) == [("all", "a")]
    assert received["c"].wait(1) == [("all", "a")]
    # Never to the sender itself: a later inform from b reaches a first and alone.
    started["b"].inform("marker", "a")
    assert received["a"].wait(1) == [("marker", "b")]


def test_inform_falsy_data_is_delivered(clients: Any) -> None:
    received = Recorder()
    receiver = clients("b", start=False)
    receiver.event(_informed(received))
    receiver.start(timeout=5)
    sender = clients("a")
    falsy: list[Any] = [{}, 0, "", [], False, None, b"", 0.0]
    for data in falsy:
        sender.inform(data, "b")
    assert [data for data, _ in received.wait(len(falsy))] == falsy


def test_a_burst_of_informs_arrives_whole_and_in_order(clients: Any) -> None:
    # A burst leaves in batches (one write for many informs); a lone inform after it is
    # written at once, not held back for a batch.
    received = Recorder()
    receiver = clients("b", start=False)
    receiver.event(_informed(received))
    receiver.start(timeout=5)
    sender = clients("a")
    burst = 3000
    for number in range(burst):
        sender.inform(number, "b")
    assert [data for data, _ in received.wait(burst, timeout=30)] == list(range(burst))
    time.sleep(0.01)
    started = time.monotonic()
    sender.inform("lone", "b")
    assert received.wait(burst + 1)[-1] == ("lone", "a")
    assert time.monotonic() - started < PROMPT


def test_inform_unencodable_raises_type_error(clients: Any) -> None:
    clients("b")
    with pytest.raises(TypeError):
        clients("a").inform(object(), "b")


def test_ping_hub_client_and_missing(clients: Any) -> None:
    clients("b")
    caller = clients("a")
    assert caller.ping() is True
    assert caller.ping(None) is True
    assert caller.ping("b") is True
    started = time.monotonic()
    assert caller.ping("missing") is False
    assert time.monotonic() - started < PROMPT


def test_peers(clients: Any) -> None:
    caller = clients("a")
    assert caller.peers() == []
    clients("c")
    other = clients("b")
    assert caller.peers() == ["b", "c"]
    assert other.peers() == ["a", "c"]


def test_peers_leave_out_clients_on_hold(clients: Any) -> None:
    caller = clients("a")
    clients("b")
    held = clients("b")
    assert held.on_hold
    assert caller.peers() == ["b"]


# --- request_many --------------------------------------------------------------------------------


def _double(source: str, x: int) -> int:
    return 2 * x


def test_request_many_with_sources(clients: Any) -> None:
    for name in ("b", "c", "d"):
        server = clients(name, start=False)
        server.route(_double)
        server.start(timeout=5)
    caller = clients("a")
    assert caller.request_many("_double", ["b", "c"], x=21) == {"b": 42, "c": 42}
    assert caller.request_many("_double", ("d",), x=1) == {"d": 2}
    assert caller.request_many("_double", [], x=1) == {}


def test_request_many_to_every_client_with_the_route(clients: Any) -> None:
    for name in ("b", "c"):
        server = clients(name, start=False)
        server.route(_double)
        server.start(timeout=5)
    clients("no-route")
    caller = clients("a", start=False)
    caller.route(_double)  # the caller's own route is not called
    caller.start(timeout=5)
    assert caller.request_many("_double", x=5) == {"b": 10, "c": 10}
    assert caller.request_many("_double", None, x=6) == {"b": 12, "c": 12}
    assert caller.request_many("unknown route") == {}


def test_request_many_with_a_missing_one(clients: Any) -> None:
    server = clients("b", start=False)
    server.route(_double)
    server.start(timeout=5)
    caller = clients("a")
    started = time.monotonic()
    results = caller.request_many("_double", ["b", "ghost"], x=2)
    assert time.monotonic() - started < PROMPT
    assert results["b"] == 4
    assert isinstance(results["ghost"], errors.DestinationNotFound)
    assert sorted(results) == ["b", "ghost"]


def test_request_many_with_a_raising_one(clients: Any) -> None:
    good = clients("b", start=False)
    good.route(_double)
    good.start(timeout=5)
    bad = clients("c", start=False)

    @bad.route("_double")
    def broken(source: str, x: int) -> int:
        raise ArithmeticError("no doubling today")

    bad.start(timeout=5)
    results = clients("a").request_many("_double", x=2)
    assert results["b"] == 4
    assert isinstance(results["c"], errors.ClientRuntimeError)
    assert results["c"].remote_type == "ArithmeticError"


def test_request_many_timeout(clients: Any) -> None:
    gate = Gate()
    fast = clients("b", start=False)
    fast.route(_double)
    fast.start(timeout=5)
    slow = clients("c", start=False)

    @slow.route("_double")
    def stuck(source: str, x: int) -> int:
        gate.wait()
        return 0

    slow.start(timeout=5)
    try:
        started = time.monotonic()
        results = clients("a").request_many("_double", timeout=0.3, x=2)
        elapsed = time.monotonic() - started
    finally:
        gate.open()
    assert 0.25 < elapsed < 0.3 + PROMPT
    assert results["b"] == 4
    assert isinstance(results["c"], errors.RequestTimeout)


# --- errors ------------------------------------------------------------------------------------


def test_destination_not_found_is_prompt(clients: Any) -> None:
    caller = clients("a")
    started = time.monotonic()
    with pytest.raises(errors.DestinationNotFound):
        caller.request("anything", "ghost")
    assert time.monotonic() - started < PROMPT


def test_route_not_found_is_prompt(clients: Any) -> None:
    clients("b")
    caller = clients("a")
    started = time.monotonic()
    with pytest.raises(errors.RouteNotFound):
        caller.request("missing", "b")
    assert time.monotonic() - started < PROMPT


def test_remote_error_is_client_runtime_error(clients: Any) -> None:
    server = clients("b", start=False)

    @server.route
    def explode(source: str, value: int) -> None:
        raise ValueError(f"bad value {value}")

    server.start(timeout=5)
    started = time.monotonic()
    with pytest.raises(errors.ClientRuntimeError) as caught:
        clients("a").request("explode", "b", value=42)
    assert time.monotonic() - started < PROMPT
    error = caught.value
    assert not isinstance(error, ValueError)  # remote errors stay distinct from local ones
    assert error.remote_type == "ValueError"
    assert error.remote_message == "bad value 42"
    assert "Traceback" in error.remote_traceback
    assert "explode" in error.remote_traceback
    assert "ValueError: bad value 42" in error.remote_traceback


def test_unencodable_return_value_is_a_remote_error(clients: Any) -> None:
    server = clients("b", start=False)

    @server.route
    def opaque(source: str) -> object:
        return object()

    server.start(timeout=5)
    with pytest.raises(errors.ClientRuntimeError) as caught:
        clients("a").request("opaque", "b")
    assert caught.value.remote_type == "TypeError"


def test_not_ready_before_start(hub: winerp.Hub) -> None:
    client = Client("a", port=hub.port)
    for call in (
        lambda: client.request("r", "b"),
        lambda: client.inform("x", "b"),
        lambda: client.ping(),
        lambda: client.peers(),
        lambda: client.request_many("r", ["b"]),
    ):
        with pytest.raises(errors.ClientNotReadyError):
            call()
    client.close()


def test_not_ready_while_on_hold(clients: Any) -> None:
    clients("b")
    clients("a")
    held = clients("a")
    assert held.on_hold
    assert not held.is_ready
    for call in (
        lambda: held.request("r", "b"),
        lambda: held.inform("x", "b"),
        lambda: held.ping(),
        lambda: held.peers(),
    ):
        started = time.monotonic()
        with pytest.raises(errors.ClientNotReadyError):
            call()
        assert time.monotonic() - started < PROMPT


def test_request_timeout_is_a_timeout_error(clients: Any) -> None:
    _, gate = _stuck_server(clients)
    caller = clients("a")
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError) as caught:
            caller.request("stuck", "b", timeout=0.2)
        elapsed = time.monotonic() - started
    finally:
        gate.open()
    assert isinstance(caught.value, errors.RequestTimeout)
    assert 0.15 < elapsed < 0.2 + PROMPT
    assert caller.ping("b")  # the late answer is dropped; the client keeps working


def test_submit_returns_futures_of_the_answers_in_flight_together(clients: Any) -> None:
    server = clients("b", start=False)
    gate = Gate()

    @server.route
    def double(source: str, number: int) -> int:
        if number == 0:
            gate.wait()  # the first answer waits until every request is in flight
        return 2 * number

    server.start(timeout=5)
    caller = clients("a")
    futures = [caller.submit("double", "b", number=number) for number in range(50)]
    assert gate.entered.wait(5)
    assert not futures[0].done() and not futures[0].cancel()  # on its way: not cancellable
    gate.open()
    assert [future.result(5) for future in futures] == [2 * number for number in range(50)]


def test_submit_errors_arrive_in_the_future(clients: Any) -> None:
    server = clients("b", start=False)

    @server.route
    def fails(source: str) -> None:
        raise ValueError("no")

    server.start(timeout=5)
    caller = clients("a")
    missing = caller.submit("fails", "nobody")
    unknown = caller.submit("no_such_route", "b")
    raising = caller.submit("fails", "b")
    assert isinstance(missing.exception(5), errors.DestinationNotFound)
    assert isinstance(unknown.exception(5), errors.RouteNotFound)
    error = raising.exception(5)
    assert isinstance(error, errors.ClientRuntimeError) and error.remote_type == "ValueError"
    with pytest.raises(errors.ClientNotReadyError):
        clients("c", start=False).submit("fails", "b")


def test_submit_times_out_by_itself_when_nobody_waits(clients: Any) -> None:
    _, gate = _stuck_server(clients)
    caller = clients("a")
    started = time.monotonic()
    future = caller.submit("stuck", "b", timeout=0.3)
    try:
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        assert done.wait(5)  # nobody called result(): the client ended it
        elapsed = time.monotonic() - started
    finally:
        gate.open()
    assert isinstance(future.exception(0), errors.RequestTimeout)
    assert 0.25 < elapsed < 0.3 + PROMPT
    assert caller.ping("b")  # the late answer is dropped; the client keeps working


def test_unencodable_arguments_raise_type_error_and_send_nothing(clients: Any) -> None:
    calls = Recorder()
    server = clients("b", start=False)

    @server.route
    def record(source: str, **kwargs: Any) -> None:
        calls.add(kwargs)

    server.start(timeout=5)
    caller = clients("a")
    with pytest.raises(TypeError):
        caller.request("record", "b", value=object())
    with pytest.raises(TypeError):
        caller.request("record", "b", value=[1, {"x": object()}])
    caller.request("record", "b", value="sent")
    assert calls.items == [{"value": "sent"}]


def test_payload_too_large() -> None:
    limit = 64 * 1024
    with winerp.Hub(port=0, max_message_size=limit) as small_hub:
        server = Client("b", port=small_hub.port)
        caller = Client("a", port=small_hub.port)

        @server.route
        def big(source: str, size: int) -> bytes:
            return b"x" * size

        @server.route
        def length(source: str, data: bytes) -> int:
            return len(data)

        with server, caller:
            with pytest.raises(errors.PayloadTooLarge):
                caller.request("length", "b", data=b"x" * (2 * limit))
            with pytest.raises(errors.PayloadTooLarge):
                caller.inform(b"x" * (2 * limit), "b")
            started = time.monotonic()
            with pytest.raises((errors.PayloadTooLarge, errors.ClientRuntimeError)) as caught:
                caller.request("big", "b", size=2 * limit)
            assert time.monotonic() - started < PROMPT
            assert "PayloadTooLarge" in repr(caught.value) or "limit" in str(caught.value)
            # Everyone keeps working.
            assert caller.request("length", "b", data=b"x" * 1000) == 1000
            assert caller.request("big", "b", size=10) == b"x" * 10
            assert small_hub.clients == ["a", "b"]


def test_client_max_message_size_is_enforced(clients: Any) -> None:
    server = clients("b", start=False)

    @server.route
    def length(source: str, data: bytes) -> int:
        return len(data)

    server.start(timeout=5)
    caller = clients("a", max_message_size=4096)
    assert caller.request("length", "b", data=b"x" * 1000) == 1000
    with pytest.raises(errors.PayloadTooLarge):
        caller.request("length", "b", data=b"x" * 10_000)


def test_handler_can_call_back_into_its_caller(clients: Any) -> None:
    outer = clients("outer", start=False)
    inner = clients("inner", start=False)

    @outer.route
    def name_twice(source: str) -> str:
        return 2 * source

    @inner.route
    def ask_back(source: str, depth: int) -> Any:
        return [inner.request("name_twice", source), depth]

    outer.start(timeout=5)
    inner.start(timeout=5)
    assert outer.request("ask_back", "inner", depth=1, timeout=5) == ["innerinner", 1]


# --- events ------------------------------------------------------------------------------------


def _informed(recorder: Recorder) -> Any:
    def on_winerp_information(data: Any, source: str) -> None:
        recorder.add((data, source))

    return on_winerp_information


def test_connect_comes_before_ready(hub: winerp.Hub) -> None:
    seen = Recorder()
    client = Client("a", port=hub.port)

    @client.event
    def on_winerp_connect() -> None:
        seen.add("connect")

    @client.event
    def on_winerp_ready() -> None:
        seen.add("ready")

    with client:
        assert seen.wait(2) == ["connect", "ready"]


def test_on_winerp_request_gets_source_and_route(clients: Any) -> None:
    seen = Recorder()
    server = clients("b", start=False)
    server.route(_echo)

    @server.event
    def on_winerp_request(source: str, route: str) -> None:
        seen.add((source, route))

    server.start(timeout=5)
    clients("a").request("_echo", "b")
    assert seen.wait(1) == [("a", "_echo")]


def test_on_winerp_error_fires_in_the_handlers_client(clients: Any) -> None:
    server_errors, caller_errors = Recorder(), Recorder()
    server = clients("b", start=False)

    @server.route
    def explode(source: str) -> None:
        raise KeyError("missing thing")

    @server.event
    def on_winerp_error(error: BaseException) -> None:
        server_errors.add(error)

    server.start(timeout=5)
    caller = clients("a", start=False)
    caller.event(_named("on_winerp_error", lambda: caller_errors.add("error")))

    caller.start(timeout=5)
    with pytest.raises(errors.ClientRuntimeError):
        caller.request("explode", "b")
    (error,) = server_errors.wait(1)
    assert isinstance(error, KeyError)
    assert caller_errors.items == []


def test_on_winerp_response_fires_in_the_requester(clients: Any) -> None:
    caller_responses, server_responses = Recorder(), Recorder()
    server = clients("b", start=False)
    server.route(_echo)
    server.event(_named("on_winerp_response", lambda: server_responses.add("response")))
    server.start(timeout=5)
    caller = clients("a", start=False)
    caller.event(_named("on_winerp_response", lambda: caller_responses.add("response")))
    caller.start(timeout=5)
    caller.request("_echo", "b")
    assert caller_responses.wait(1) == ["response"]
    assert server_responses.items == []


def test_on_winerp_information_gets_data_and_source(clients: Any) -> None:
    seen = Recorder()
    receiver = clients("b", start=False)

    @receiver.event
    def on_winerp_information(data: Any, source: str) -> None:
        seen.add((data, source))

    receiver.start(timeout=5)
    clients("a").inform({"k": [1, b"2"]}, "b")
    assert seen.wait(1) == [({"k": [1, b"2"]}, "a")]


def test_event_handlers_may_take_fewer_parameters(clients: Any) -> None:
    seen = Recorder()
    server = clients("b", start=False)

    @server.route
    def explode(source: str) -> None:
        raise RuntimeError("x")

    @server.event
    def on_winerp_request() -> None:
        seen.add("request")

    @server.event
    def on_winerp_error() -> None:
        seen.add("error")

    @server.event
    def on_winerp_information(data: Any) -> None:
        seen.add(("information", data))

    server.start(timeout=5)
    caller = clients("a")
    with pytest.raises(errors.ClientRuntimeError):
        caller.request("explode", "b")
    caller.inform("data", "b")
    assert seen.wait(3) == ["request", "error", ("information", "data")]


def test_unknown_event_raises_name_error(clients: Any) -> None:
    client = clients("a", start=False)
    with pytest.raises(NameError):

        @client.event
        def on_winerp_something_else() -> None:
            pass

    with pytest.raises(NameError):
        client.event(lambda: None)


def test_peer_join_and_leave(clients: Any) -> None:
    seen = Recorder()
    watcher = clients("a", start=False)

    @watcher.event
    def on_winerp_peer_join(name: str) -> None:
        seen.add(("join", name))

    @watcher.event
    def on_winerp_peer_leave(name: str) -> None:
        seen.add(("leave", name))

    watcher.start(timeout=5)
    other = clients("b")
    assert seen.wait(1) == [("join", "b")]
    other.close()
    assert seen.wait(2) == [("join", "b"), ("leave", "b")]


def test_a_raising_event_handler_is_logged_and_the_client_keeps_working(
    clients: Any, caplog: pytest.LogCaptureFixture
) -> None:
    seen = Recorder()
    receiver = clients("b", start=False)

    @receiver.event
    def on_winerp_information(data: Any) -> None:
        if data == "raise":
            raise RuntimeError("handler bug")
        seen.add(data)

    receiver.start(timeout=5)
    sender = clients("a")
    with caplog.at_level(logging.ERROR, logger="winerp"):
        sender.inform("raise", "b")
        sender.inform("after", "b")
        assert seen.wait(1) == ["after"]
    assert any("handler bug" in (record.exc_text or "") for record in caplog.records)


# --- state -------------------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["is_ready", "authorized", "on_hold", "name", "local_name"])
def test_read_only_properties(clients: Any, attribute: str) -> None:
    client = clients("a")
    before = getattr(client, attribute)
    with pytest.raises(AttributeError):
        setattr(client, attribute, not before if isinstance(before, bool) else "other")
    assert getattr(client, attribute) == before


# --- names on hold -----------------------------------------------------------------------------


def test_second_client_with_the_same_name_is_on_hold(clients: Any) -> None:
    holder = clients("name")
    server = clients("b", start=False)
    server.route(_echo)
    server.start(timeout=5)
    ready = Recorder()
    waiter = clients("name", start=False)
    waiter.event(_named("on_winerp_ready", lambda: ready.add("ready")))
    started = time.monotonic()
    waiter.start(timeout=5)  # returns while on hold
    assert time.monotonic() - started < PROMPT
    assert waiter.on_hold
    assert not waiter.is_ready
    with pytest.raises(errors.ClientNotReadyError):
        waiter.request("_echo", "b")
    with pytest.raises(errors.RequestTimeout):
        waiter.wait_until_ready(timeout=0.05)
    assert ready.items == []

    holder.close()
    waiter.wait_until_ready(timeout=5)
    assert ready.wait(1) == ["ready"]
    assert waiter.is_ready
    assert not waiter.on_hold
    assert waiter.request("_echo", "b") == {"source": "name", "kwargs": {}}


def test_several_waiters_take_over_in_arrival_order(clients: Any) -> None:
    holder = clients("name", start=False)
    holder.route("whoami")(lambda source: "holder")
    holder.start(timeout=5)
    waiters = []
    for index in range(3):
        waiter = clients("name", start=False)
        waiter.route("whoami")(_constant(f"waiter-{index}"))
        waiter.start(timeout=5)
        assert waiter.on_hold
        waiters.append(waiter)
    caller = clients("caller")
    assert caller.request("whoami", "name") == "holder"
    previous = holder
    for index, waiter in enumerate(waiters):
        previous.close()
        waiter.wait_until_ready(timeout=5)
        assert all(w.on_hold for w in waiters[index + 1 :])
        assert caller.request("whoami", "name") == f"waiter-{index}"
        previous = waiter


def test_wait_until_ready(clients: Any) -> None:
    client = clients("a")
    client.wait_until_ready()
    client.wait_until_ready(timeout=0.01)


# --- in flight, concurrency ----------------------------------------------------------------------


def test_close_fails_in_flight_requests_with_connection_lost(clients: Any) -> None:
    _, gate = _stuck_server(clients)
    caller = clients("a")
    outcome = Recorder()

    def call() -> None:
        try:
            caller.request("stuck", "b", timeout=30)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.add(exc)

    thread = threading.Thread(target=call)
    thread.start()
    try:
        assert gate.entered.wait(5)
        started = time.monotonic()
        caller.close()
        (error,) = outcome.wait(1, timeout=PROMPT)
        assert time.monotonic() - started < PROMPT
        assert isinstance(error, errors.ConnectionLost)
        assert isinstance(error, ConnectionError)
    finally:
        gate.open()
        thread.join(5)


def test_peer_disconnected_when_the_destination_leaves(clients: Any) -> None:
    server, gate = _stuck_server(clients)
    caller = clients("a")
    outcome = Recorder()

    def call() -> None:
        try:
            caller.request("stuck", "b", timeout=30)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.add(exc)

    thread = threading.Thread(target=call)
    thread.start()
    try:
        assert gate.entered.wait(5)
        closer = threading.Thread(target=server.close)  # close() waits for the running handler
        closer.start()
        (error,) = outcome.wait(1, timeout=PROMPT)
        assert isinstance(error, errors.PeerDisconnected)
    finally:
        gate.open()
        thread.join(5)
        closer.join(5)


def test_concurrent_requests_match_their_answers(clients: Any) -> None:
    server = clients("b", start=False)

    @server.route
    def echo(source: str, worker: int, n: int) -> list[Any]:
        return [source, worker, n]

    server.start(timeout=5)
    caller = clients("a")
    failures: list[Any] = []

    def work(worker: int) -> None:
        for n in range(200):
            answer = caller.request("echo", "b", worker=worker, n=n, timeout=30)
            if answer != ["a", worker, n]:
                failures.append((worker, n, answer))

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert not any(thread.is_alive() for thread in threads)


# --- helpers -----------------------------------------------------------------------------------


def _named(name: str, function: Any) -> Any:
    def handler(*args: Any) -> None:
        function()

    handler.__name__ = name
    return handler


def _constant(value: Any) -> Any:
    def handler(source: str) -> Any:
        return value

    return handler


# --- first-day edges: error text, peers with routes --------------------------------------------


def test_remote_error_str_begins_with_the_remote_type(clients: Any) -> None:
    server = clients("b", start=False)

    @server.route
    def fail(source: str, kind: str, user_id: int = 0) -> None:
        if kind == "value":
            raise ValueError(f"bad user id {user_id}")
        if kind == "key":
            raise KeyError("user")
        raise RuntimeError

    server.start(timeout=5)
    caller = clients("a")
    texts = []
    for kind in ("value", "key", "bare"):
        with pytest.raises(errors.ClientRuntimeError) as caught:
            caller.request("fail", "b", kind=kind, user_id=42)
        texts.append(str(caught.value))
    assert texts == ["ValueError: bad user id 42", "KeyError: 'user'", "RuntimeError"]
    assert caught.value.remote_message == ""  # the parts stay as they were


def test_peers_with_routes(clients: Any, hub: winerp.Hub) -> None:
    server = clients("b", start=False)
    server.route(_double)
    server.route("alias")(_echo)
    server.start(timeout=5)
    caller = clients("a", start=False)
    caller.route(_echo)  # its own routes are not listed: it is not its own peer
    caller.start(timeout=5)
    assert clients("b").on_hold  # a held client is no peer either
    assert caller.peers(routes=True) == {"b": ["_double", "alias"]}

    @server.route
    def late(source: str) -> None:
        pass

    assert server.ping()  # the hub reads the new route before it answers this ping
    legacy = raw_ws(hub.port, native=False)  # a winerp 1.x client: its routes are unknown
    try:
        legacy.send('{"type": 1, "id": "old", "uuid": "u"}')
        legacy.recv()
        assert caller.peers(5, True) == {"b": ["_double", "alias", "late"], "old": []}
        assert caller.peers() == caller.peers(routes=False) == ["b", "old"]
    finally:
        legacy.close()
