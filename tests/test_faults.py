"""Faults: reconnects, heartbeats, hub restarts, and every request ending exactly once.

Hubs and peers run as real processes so they can be SIGKILLed, SIGTERMed and SIGSTOPped.
The client under test lives in this process behind a small adapter (`SyncSide`,
`AioSide`) so every test runs once for each client, with the same code: the aio side runs
its client on an event loop in a thread of its own and uses coroutine handlers. Peers are
subprocesses of the same kind as the side under test (`PEER` below).

Timing limits come from the contract (API.md, "Behaviour a user relies on"): calls while
down fail at once, a SIGKILLed process is noticed at once (TCP says so), a silent one (SIGSTOP)
within a few seconds thanks to the heartbeat (default 1 s, dead after five), and a client
comes back by itself within seconds of a hub restart.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import json
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import winerp
import winerp.aio
import winerp.sync
from winerp import errors
from winerp.protocol.frames import SUBPROTOCOL, Hello

try:
    from conftest import ROOT, core_request, wait_for, winerp_threads
except ImportError:  # tests/ is a package
    from tests.conftest import ROOT, core_request, wait_for, winerp_threads

pytestmark = pytest.mark.timeout(90)

KINDS = ("sync", "aio")
#: A SIGSTOPped (silent) process is noticed after five heartbeats of 1 s; this adds slack
#: for the sweep interval and a loaded CI machine.
SILENT_DETECTION = 6.5
#: A SIGKILLed process closes its sockets, so the other side sees it at once.
PROMPT = 2.0
#: "At once": a call that needs a connection while there is none.
AT_ONCE = 0.25
#: A client is ready again within this many seconds of a hub coming back on its port
#: (the reconnect backoff is capped at 3 s).
READY_AGAIN = 4.5

#: Time from a restarted hub accepting connections to the client being ready, per test.
TIME_TO_READY: list[float] = []
#: How long each fault took to surface, for the summary printed at the end (run with -s).
FIGURES: dict[str, list[float]] = {}


def note(what: str, seconds: float) -> None:
    FIGURES.setdefault(what, []).append(seconds)


@pytest.fixture(scope="module", autouse=True)
def _print_figures() -> Iterator[None]:
    yield
    FIGURES["time to ready after a hub restart"] = TIME_TO_READY
    for what, values in sorted(FIGURES.items()):
        if not values:
            continue
        print(f"\n{what}: median {statistics.median(values):.3f} s, max {max(values):.3f} s, n={len(values)}", end="")


# --- processes -----------------------------------------------------------------------------

PEER = r"""
import asyncio
import json
import sys
import threading
import time

from winerp import errors

kind, name, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
executions = {}


def say(**fields):
    print(json.dumps(fields), flush=True)


def started(source, tag):
    executions[tag] = executions.get(tag, 0) + 1
    say(event="executing", tag=tag)


if kind == "sync":
    from winerp.sync import Client

    client = Client(name, port=port)
    forever = threading.Event()

    @client.route
    def echo(source, **kwargs):
        return {"by": name, "source": source, "kwargs": kwargs}

    @client.route
    def hang(source, tag):
        started(source, tag)
        client.inform(["started", tag], source)
        forever.wait()

    @client.route
    def slow(source, seconds, tag):
        started(source, tag)
        time.sleep(seconds)
        return tag

    @client.route("executions")
    def executions_route(source):
        return executions

    @client.route
    def ask(source, target, call, wait=5, kwargs=None):
        try:
            return {"ok": client.request(call, target, timeout=wait, **(kwargs or {}))}
        except errors.WinerpError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}

    @client.event
    def on_winerp_ready():
        say(event="ready", t=time.time())

    @client.event
    def on_winerp_disconnect():
        say(event="disconnect", t=time.time())

    client.start(timeout=30)
    forever.wait()
else:
    from winerp.aio import Client

    async def main():
        client = Client(name, port=port)
        forever = asyncio.Event()

        @client.route
        async def echo(source, **kwargs):
            return {"by": name, "source": source, "kwargs": kwargs}

        @client.route
        async def hang(source, tag):
            started(source, tag)
            await client.inform(["started", tag], source)
            await forever.wait()

        @client.route
        async def slow(source, seconds, tag):
            started(source, tag)
            await asyncio.sleep(seconds)
            return tag

        @client.route("executions")
        async def executions_route(source):
            return executions

        @client.route
        async def ask(source, target, call, wait=5, kwargs=None):
            try:
                return {"ok": await client.request(call, target, timeout=wait, **(kwargs or {}))}
            except errors.WinerpError as exc:
                return {"error": type(exc).__name__, "message": str(exc)}

        @client.event
        async def on_winerp_ready():
            say(event="ready", t=time.time())

        @client.event
        async def on_winerp_disconnect():
            say(event="disconnect", t=time.time())

        await client.start(timeout=30)
        await forever.wait()

    asyncio.run(main())
"""


class Process:
    """A child process whose stdout lines are collected (as they come) by a thread.

    stderr goes to a file, shown when a test fails.
    """

    def __init__(self, args: list[str], log: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.log = log
        self._stderr = open(log, "w")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            [sys.executable, *args], stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env
        )
        self.lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"test-stdout-{self.proc.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append((time.monotonic(), line.strip()))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_line(self, predicate: Callable[[str], bool], timeout: float, after: float = 0.0) -> float:
        """Wait for a stdout line matching ``predicate`` seen after ``after``; return when it came."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for seen, line in self.lines:
                    if seen >= after and predicate(line):
                        return seen
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    pytest.fail(f"no matching line from {self.proc.args} within {timeout} s:\n{self.stderr()}")
                self._changed.wait(min(left, 0.5))

    def signal(self, signum: int) -> float:
        self.proc.send_signal(signum)
        return time.monotonic()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        self._reader.join(5)
        self._stderr.close()

    def stderr(self) -> str:
        self._stderr.flush()
        return self.log.read_text()[-4000:]


class HubProcess(Process):
    """``python -m winerp --port N``: returns once it accepts connections."""

    def __init__(self, port: int, log: Path, *extra: str) -> None:
        super().__init__(["-m", "winerp", "--port", str(port), "--log-level", "WARNING", *extra], log)
        self.listening_at = self.wait_line(lambda line: "listening" in line, timeout=20)


class PeerProcess(Process):
    """A client process of one kind with the routes of `PEER`; reconnects by itself."""

    def __init__(self, kind: str, name: str, port: int, log: Path) -> None:
        super().__init__(["-c", PEER, kind, name, str(port)], log)
        self.name = name

    def events(self, event: str, after: float = 0.0) -> int:
        with self._changed:
            return sum(1 for seen, line in self.lines if seen >= after and json.loads(line).get("event") == event)

    def wait_event(self, event: str, timeout: float, after: float = 0.0) -> float:
        return self.wait_line(lambda line: json.loads(line).get("event") == event, timeout, after)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start hub and peer processes; every one is killed after the test."""
    started: list[Process] = []
    count = iter(range(1000))

    def _spawn(what: str, *args: Any) -> Any:
        log = tmp_path / f"{what}-{next(count)}.log"
        process: Process = HubProcess(*args, log) if what == "hub" else PeerProcess(*args, log)
        started.append(process)
        return process

    yield _spawn
    for process in started:
        process.kill()


# --- the client under test, sync or aio, behind one interface ---------------------------------


class Recorder:
    """Events a client fired, in order, with when they came."""

    def __init__(self) -> None:
        self.items: list[tuple[float, str, tuple[Any, ...]]] = []
        self._changed = threading.Condition()

    def add(self, name: str, *args: Any) -> None:
        with self._changed:
            self.items.append((time.monotonic(), name, args))
            self._changed.notify_all()

    def names(self, after: float = 0.0) -> list[str]:
        with self._changed:
            return [name for seen, name, _ in self.items if seen >= after]

    def lifecycle(self, after: float = 0.0) -> list[str]:
        """The connect, ready and disconnect events after ``after``, in order."""
        return [name for name in self.names(after) if name in ("connect", "ready", "disconnect")]

    def wait(self, predicate: Callable[[list[tuple[float, str, tuple[Any, ...]]]], Any], timeout: float) -> Any:
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self.items), timeout):
                pytest.fail(f"events not seen within {timeout} s; got {[n for _, n, _ in self.items]}")
            return predicate(self.items)

    def wait_event(self, name: str, timeout: float, after: float = 0.0) -> float:
        """Wait for event ``name`` after ``after``; return when it came."""

        def seen(items: list[tuple[float, str, tuple[Any, ...]]]) -> float | None:
            return next((t for t, n, _ in items if n == name and t >= after), None)

        return float(self.wait(seen, timeout))

    def wait_information(self, data: Any, timeout: float) -> None:
        self.wait(lambda items: any(n == "information" and a[0] == data for _, n, a in items), timeout)


EVENTS = ("on_winerp_connect", "on_winerp_ready", "on_winerp_disconnect", "on_winerp_response")


class SyncSide:
    """A `winerp.sync.Client` in this process."""

    kind = "sync"

    def __init__(self, name: str, port: int, **options: Any) -> None:
        self.client = winerp.sync.Client(name, port=port, **options)
        self.events = Recorder()
        for event in EVENTS:
            self.client.event(self._recorder(event))

        def on_winerp_information(data: Any, source: str) -> None:
            self.events.add("information", data, source)

        self.client.event(on_winerp_information)

    def _recorder(self, event: str) -> Callable[[], None]:
        def handler() -> None:
            self.events.add(event.removeprefix("on_winerp_"))

        handler.__name__ = event
        return handler

    @property
    def core(self) -> Any:
        return self.client._core

    @property
    def is_ready(self) -> bool:
        return self.client.is_ready

    def route(self, name: str, function: Callable[..., Any]) -> None:
        self.client.route(name)(function)

    def start(self, timeout: float = 10) -> None:
        self.client.start(timeout)

    def request(self, route: str, source: str, timeout: float = 10, **kwargs: Any) -> Any:
        return self.client.request(route, source, timeout=timeout, **kwargs)

    def inform(self, data: Any, destinations: Any = None) -> None:
        self.client.inform(data, destinations)

    def ping(self, name: str | None = None, timeout: float = 5) -> bool:
        return self.client.ping(name, timeout=timeout)

    def close(self) -> None:
        self.client.close()


class AioSide(SyncSide):
    """A `winerp.aio.Client` on an event loop of its own thread; handlers are coroutines."""

    kind = "aio"

    def __init__(self, name: str, port: int, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"test-loop-{name}", daemon=True)
        self._thread.start()
        self.client = winerp.aio.Client(name, port=port, **options)  # type: ignore[assignment]
        self.events = Recorder()
        for event in EVENTS:
            self.client.event(self._recorder(event))

        async def on_winerp_information(data: Any, source: str) -> None:
            self.events.add("information", data, source)

        self.client.event(on_winerp_information)

    def _recorder(self, event: str) -> Callable[[], Any]:  # type: ignore[override]
        async def handler() -> None:
            self.events.add(event.removeprefix("on_winerp_"))

        handler.__name__ = event
        return handler

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def route(self, name: str, function: Callable[..., Any]) -> None:
        async def handler(source: str, **kwargs: Any) -> Any:
            return function(source, **kwargs)

        self.client.route(name)(handler)

    def start(self, timeout: float = 10) -> None:
        self._run(self.client.start(timeout))

    def request(self, route: str, source: str, timeout: float = 10, **kwargs: Any) -> Any:
        return self._run(self.client.request(route, source, timeout=timeout, **kwargs))

    def inform(self, data: Any, destinations: Any = None) -> None:
        self._run(self.client.inform(data, destinations))

    def ping(self, name: str | None = None, timeout: float = 5) -> bool:
        return bool(self._run(self.client.ping(name, timeout=timeout)))

    def close(self) -> None:
        try:
            self._run(self.client.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            self.loop.close()


SIDES = {"sync": SyncSide, "aio": AioSide}


@pytest.fixture
def make_side(calls: concurrent.futures.ThreadPoolExecutor) -> Iterator[Callable[..., SyncSide]]:
    """Build clients under test of a kind; every one is closed after the test.

    Closed before `calls` ends, so requests a failed test left in flight end at once.
    """
    made: list[SyncSide] = []

    def _make(kind: str, name: str, port: int, **options: Any) -> SyncSide:
        side = SIDES[kind](name, port, **options)
        made.append(side)
        return side

    yield _make
    for side in made:
        side.close()


def echo_route(source: str, **kwargs: Any) -> Any:
    return {"source": source, "kwargs": kwargs}


def elapsed_call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """Call ``function``; return (its value or the exception it raised, seconds it took)."""
    started = time.monotonic()
    try:
        value = function(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - inspected by the caller
        value = exc
    return value, time.monotonic() - started


def assert_down(side: SyncSide) -> None:
    """Every call that needs the connection raises ClientNotReadyError at once."""
    assert not side.is_ready
    for function, args in (
        (side.request, ("echo", "peer")),
        (side.inform, ("lost?", None)),
        (side.ping, (None,)),
        (side.ping, ("peer",)),
    ):
        outcome, took = elapsed_call(function, *args)
        assert isinstance(outcome, errors.ClientNotReadyError), (function.__name__, outcome)
        assert took < AT_ONCE, (function.__name__, took)


@pytest.fixture
def calls() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """Threads for requests left in flight while the test does something else."""
    with concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="test-call") as pool:
        yield pool


def ended_within(future: concurrent.futures.Future[Any], since: float, limit: float) -> tuple[Any, float]:
    """The outcome of a request left in flight (value or exception), and when it ended after ``since``."""
    try:
        outcome = future.result(limit + 5)
    except Exception as exc:  # noqa: BLE001 - inspected by the caller
        outcome = exc
    return outcome, time.monotonic() - since


# --- start(timeout) with no hub --------------------------------------------------------------


@pytest.mark.parametrize("reconnect", [True, False], ids=["reconnect", "no-reconnect"])
@pytest.mark.parametrize("kind", KINDS)
def test_start_with_no_hub_raises_hub_unreachable_within_timeout(
    make_side: Callable[..., SyncSide], kind: str, reconnect: bool
) -> None:
    side = make_side(kind, "lonely", free_port(), reconnect=reconnect)
    outcome, took = elapsed_call(side.start, timeout=1.0)
    assert isinstance(outcome, errors.HubUnreachable), outcome
    assert isinstance(outcome, ConnectionError)
    assert took < 1.5
    # It gave up: no thread keeps trying, and calls fail at once.
    wait_for(lambda: "winerp-reader-lonely" not in winerp_threads(), timeout=3)
    assert_down(side)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield int(listener.getsockname()[1])


@pytest.mark.parametrize("reconnect", [True, False], ids=["reconnect", "no-reconnect"])
@pytest.mark.parametrize("kind", KINDS)
def test_start_against_a_silent_server_raises_request_timeout_within_timeout(
    make_side: Callable[..., SyncSide], silent_server: int, kind: str, reconnect: bool
) -> None:
    side = make_side(kind, "patient", silent_server, reconnect=reconnect)
    outcome, took = elapsed_call(side.start, timeout=1.0)
    assert isinstance(outcome, errors.RequestTimeout), outcome
    assert took < 1.5


@pytest.fixture
def mute_hub() -> Iterator[int]:
    """A server that completes the websocket handshake, then never welcomes anyone."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            held.append(sock)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
            key = next(
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: "
                + accept
                + b"\r\nSec-WebSocket-Protocol: "
                + SUBPROTOCOL.encode()
                + b"\r\n\r\n"
            )

    thread = threading.Thread(target=serve, name="test-mute-hub", daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
    listener.close()
    thread.join(5)
    for sock in held:
        sock.close()


@pytest.mark.parametrize("reconnect", [True, False], ids=["reconnect", "no-reconnect"])
@pytest.mark.parametrize("kind", KINDS)
def test_start_against_a_hub_that_never_welcomes_raises_within_timeout(
    make_side: Callable[..., SyncSide], mute_hub: int, kind: str, reconnect: bool
) -> None:
    side = make_side(kind, "unwelcome", mute_hub, reconnect=reconnect)
    outcome, took = elapsed_call(side.start, timeout=1.0)
    assert isinstance(outcome, errors.RequestTimeout), outcome
    assert took < 1.5


@pytest.mark.parametrize("kind", KINDS)
def test_refused_token_is_never_retried(make_side: Callable[..., SyncSide], kind: str) -> None:
    with winerp.Hub(port=0, token="right") as hub:
        side = make_side(kind, "intruder", hub.port, token="wrong", reconnect=True)
        outcome, took = elapsed_call(side.start, timeout=5)
        assert isinstance(outcome, errors.UnauthorizedError), outcome
        assert took < 1.0
        # No thread is left to try again.
        wait_for(lambda: "winerp-reader-intruder" not in winerp_threads(), timeout=3)
        assert not side.client.authorized
        assert_down(side)


# --- hub restarts ----------------------------------------------------------------------------


def _wait_ready_again(side: SyncSide, peer: PeerProcess, since: float, hub: HubProcess) -> float:
    """Wait for the side and the peer to be ready after ``since``; return the side's time to ready."""
    ready_at = side.events.wait_event("ready", READY_AGAIN + 3, after=since)
    peer.wait_event("ready", READY_AGAIN + 3, after=since)
    took = ready_at - hub.listening_at
    TIME_TO_READY.append(took)
    return took


def _assert_flows_both_ways(side: SyncSide, peer: PeerProcess, routes: list[str]) -> None:
    assert side.request("echo", peer.name, x=[1, b"2"]) == {
        "by": peer.name,
        "source": "main",
        "kwargs": {"x": [1, b"2"]},
    }
    for route in routes:
        answer = side.request("ask", peer.name, target="main", call=route, kwargs={"n": route})
        assert answer == {"ok": {"source": peer.name, "kwargs": {"n": route}}}, route


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("kind", KINDS)
def test_hub_restart_on_the_same_port(
    spawn: Callable[..., Any],
    make_side: Callable[..., SyncSide],
    calls: concurrent.futures.ThreadPoolExecutor,
    kind: str,
    signum: int,
) -> None:
    port = free_port()
    hub = spawn("hub", port)
    peer = spawn("peer", kind, "peer", port)
    peer.wait_event("ready", 20)
    side = make_side(kind, "main", port)
    side.route("before", echo_route)
    side.start()
    side.route("after", echo_route)
    _assert_flows_both_ways(side, peer, ["before", "after"])

    # Requests in flight when the hub goes: each ends once, and is never sent again.
    tags = [f"{kind}-{n}" for n in range(4)]
    in_flight = [calls.submit(side.request, "hang", "peer", timeout=30, tag=tag) for tag in tags]
    for tag in tags:
        side.events.wait_information(["started", tag], 5)

    # 1. The hub goes and comes back at once.
    killed = hub.signal(signum)
    for future in in_flight:
        outcome, took = ended_within(future, killed, PROMPT)
        allowed = (
            (errors.ConnectionLost,) if signum == signal.SIGKILL else (errors.ConnectionLost, errors.PeerDisconnected)
        )
        assert isinstance(outcome, allowed), outcome
        assert took < PROMPT
    side.events.wait_event("disconnect", PROMPT, after=killed)
    assert_down(side)
    hub.proc.wait(10)
    hub = spawn("hub", port)
    took = _wait_ready_again(side, peer, killed, hub)
    assert took < READY_AGAIN
    assert side.events.lifecycle(after=killed) == ["disconnect", "connect", "ready"]
    _assert_flows_both_ways(side, peer, ["before", "after"])
    assert side.request("executions", "peer") == dict.fromkeys(tags, 1)

    # 2. The hub goes and comes back a few seconds later; a route is added while it is down.
    killed = hub.signal(signum)
    side.events.wait_event("disconnect", PROMPT, after=killed)
    side.route("while_down", echo_route)
    hub.proc.wait(10)
    while time.monotonic() - killed < 3.0:
        assert_down(side)
        time.sleep(0.25)
    hub = spawn("hub", port)
    took = _wait_ready_again(side, peer, killed, hub)
    assert took < READY_AGAIN
    assert side.events.lifecycle(after=killed) == ["disconnect", "connect", "ready"]
    _assert_flows_both_ways(side, peer, ["before", "after", "while_down"])
    assert side.request("executions", "peer") == dict.fromkeys(tags, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_hub_stop_in_process_fails_in_flight_requests_and_clients_reconnect_at_once(
    make_side: Callable[..., SyncSide], calls: concurrent.futures.ThreadPoolExecutor, kind: str
) -> None:
    hub = winerp.Hub(port=0)
    hub.start()
    port = hub.port
    try:
        helper = make_side("sync", "peer", port)
        hanging = threading.Event()
        helper.route("hang", lambda source: hanging.wait(30))
        helper.route("echo", echo_route)
        helper.start()
        side = make_side(kind, "main", port)
        side.start()
        in_flight = calls.submit(side.request, "hang", "peer", timeout=30)
        wait_for(lambda: any(c["in_flight"] for c in hub.status()["clients"] if c["name"] == "main"), timeout=5)
        stopping = time.monotonic()
        hub.stop()
        outcome, took = ended_within(in_flight, stopping, PROMPT)
        assert isinstance(outcome, (errors.ConnectionLost, errors.PeerDisconnected)), outcome
        assert took < PROMPT
        hub = winerp.Hub(port=port)
        hub.start()
        restarted = time.monotonic()
        ready_at = side.events.wait_event("ready", READY_AGAIN, after=stopping)
        # The hub said it was going away (close 1001): the client came back without a backoff.
        assert ready_at - restarted < 1.0
        TIME_TO_READY.append(ready_at - restarted)
        wait_for(lambda: set(hub.clients) == {"main", "peer"}, timeout=READY_AGAIN)
        assert side.request("echo", "peer") == {"source": "main", "kwargs": {}}
    finally:
        hanging.set()
        hub.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_reconnect_false_stays_down(spawn: Callable[..., Any], make_side: Callable[..., SyncSide], kind: str) -> None:
    port = free_port()
    hub = spawn("hub", port)
    side = make_side(kind, "main", port, reconnect=False)
    side.start()
    assert side.ping() is True
    stopped = hub.signal(signal.SIGTERM)  # a 1001 close would make a reconnecting client come back at once
    side.events.wait_event("disconnect", PROMPT, after=stopped)
    hub.proc.wait(10)
    hub = spawn("hub", port)
    # The reader thread is the only thing that could reconnect: it ends.
    wait_for(lambda: "winerp-reader-main" not in winerp_threads(), timeout=3)
    probe = make_side("sync", "probe", port)
    probe.start()
    assert probe.ping("main") is False
    assert_down(side)
    assert side.events.lifecycle(after=stopped) == ["disconnect"]


# --- peers dying mid-request -----------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
@pytest.mark.parametrize("kind", KINDS)
def test_peer_dying_mid_request_gives_peer_disconnected(
    hub: winerp.Hub,
    spawn: Callable[..., Any],
    make_side: Callable[..., SyncSide],
    calls: concurrent.futures.ThreadPoolExecutor,
    kind: str,
    signum: int,
) -> None:
    peer = spawn("peer", kind, "peer", hub.port)
    bystander = spawn("peer", kind, "bystander", hub.port)
    peer.wait_event("ready", 20)
    bystander.wait_event("ready", 20)
    side = make_side(kind, "main", hub.port)
    side.start()
    direct = calls.submit(side.request, "hang", "peer", timeout=30, tag="direct")
    # One more through another process: the hub fails requests of every requester.
    relayed = calls.submit(
        side.request, "ask", "bystander", timeout=30, target="peer", call="hang", wait=30, kwargs={"tag": "relayed"}
    )
    side.events.wait_information(["started", "direct"], 5)
    peer.wait_line(lambda line: "relayed" in line, 5)
    killed = peer.signal(signum)
    limit = PROMPT if signum == signal.SIGKILL else SILENT_DETECTION
    outcome, took = ended_within(direct, killed, limit)
    note(f"PeerDisconnected after the peer's {signal.Signals(signum).name}", took)
    assert isinstance(outcome, errors.PeerDisconnected), outcome
    assert took < limit
    outcome, took = ended_within(relayed, killed, limit)
    assert outcome["error"] == "PeerDisconnected", outcome
    assert took < limit
    # The hub dropped the dead peer; everyone else carries on.
    assert "peer" not in hub.clients
    assert side.ping("peer") is False
    outcome, took = elapsed_call(side.request, "echo", "peer")
    assert isinstance(outcome, errors.DestinationNotFound) and took < AT_ONCE
    assert side.request("echo", "bystander")["by"] == "bystander"
    assert side.is_ready and side.events.lifecycle(after=killed) == []


# --- the hub dying mid-request ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_hub_sigkilled_mid_request_gives_connection_lost(
    spawn: Callable[..., Any],
    make_side: Callable[..., SyncSide],
    calls: concurrent.futures.ThreadPoolExecutor,
    kind: str,
) -> None:
    port = free_port()
    hub = spawn("hub", port)
    peer = spawn("peer", kind, "peer", port)
    peer.wait_event("ready", 20)
    side = make_side(kind, "main", port)
    side.start()
    in_flight = calls.submit(side.request, "hang", "peer", timeout=30, tag="x")
    side.events.wait_information(["started", "x"], 5)
    killed = hub.signal(signal.SIGKILL)
    outcome, took = ended_within(in_flight, killed, PROMPT)
    note("ConnectionLost after the hub's SIGKILL", took)
    assert isinstance(outcome, errors.ConnectionLost), outcome
    assert took < PROMPT
    side.events.wait_event("disconnect", PROMPT, after=killed)
    assert_down(side)


@pytest.mark.parametrize("kind", KINDS)
def test_hub_sigstopped_mid_request_gives_connection_lost_then_comes_back(
    spawn: Callable[..., Any],
    make_side: Callable[..., SyncSide],
    calls: concurrent.futures.ThreadPoolExecutor,
    kind: str,
) -> None:
    port = free_port()
    hub = spawn("hub", port)
    peer = spawn("peer", kind, "peer", port)
    peer.wait_event("ready", 20)
    side = make_side(kind, "main", port)
    side.start()
    in_flight = calls.submit(side.request, "hang", "peer", timeout=30, tag="x")
    side.events.wait_information(["started", "x"], 5)
    stopped = hub.signal(signal.SIGSTOP)
    # Nothing on the wire says the hub is gone: the client's heartbeat finds out.
    outcome, took = ended_within(in_flight, stopped, SILENT_DETECTION)
    note("ConnectionLost after the hub's SIGSTOP", took)
    assert isinstance(outcome, errors.ConnectionLost), outcome
    assert took < SILENT_DETECTION
    side.events.wait_event("disconnect", 1, after=stopped)
    assert_down(side)
    # The hub wakes up: it finds the old connections gone, and the clients come back to it.
    continued = hub.signal(signal.SIGCONT)
    note("ready again after the hub's SIGCONT", side.events.wait_event("ready", 10, after=continued) - continued)
    peer.wait_event("ready", 10, after=continued)
    assert side.request("echo", "peer", n=1)["kwargs"] == {"n": 1}
    assert side.request("executions", "peer") == {"x": 1}


# --- timeouts --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_late_reply_after_timeout_is_dropped_quietly(
    hub: winerp.Hub,
    spawn: Callable[..., Any],
    make_side: Callable[..., SyncSide],
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    peer = spawn("peer", kind, "peer", hub.port)
    peer.wait_event("ready", 20)
    side = make_side(kind, "main", hub.port)
    side.start()
    caplog.set_level(logging.DEBUG, logger="winerp")
    responses = len([n for n in side.events.names() if n == "response"])
    outcome, took = elapsed_call(side.request, "slow", "peer", timeout=0.3, seconds=0.8, tag="late")
    assert isinstance(outcome, errors.RequestTimeout) and isinstance(outcome, TimeoutError), outcome
    assert 0.25 < took < 0.3 + AT_ONCE
    # The answer arrives anyway, after the caller gave up; it is dropped without a fuss.
    side.events.wait(lambda items: sum(n == "response" for _, n, _ in items) > responses, 5)
    assert not len(side.core._calls)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert side.request("slow", "peer", seconds=0, tag="next") == "next"
    assert side.request("executions", "peer") == {"late": 1, "next": 1}


# --- races around reconnects -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_route_added_while_the_client_registers_is_served(
    hub: winerp.Hub,
    make_side: Callable[..., SyncSide],
    calls: concurrent.futures.ThreadPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """A route added between the client's Hello and the hub's Welcome is registered too.

    That window opens on every (re)connect: e.g. a bot that runs ``start()`` as a task and
    adds routes as its extensions load, or any thread adding a route during a reconnect.
    The hub is made to hold the Hello here so the window is wide open.
    """
    caller = make_side("sync", "caller", hub.port)
    caller.start()
    registering, proceed = threading.Event(), threading.Event()
    register = hub._router._register

    def held_register(session: Any, hello: Any, out: Any) -> None:
        if hello.name == "main":
            registering.set()
            proceed.wait(5)
        register(session, hello, out)

    monkeypatch.setitem(hub._router._handlers, Hello, held_register)
    side = make_side(kind, "main", hub.port)
    side.route("early", echo_route)
    starting = calls.submit(side.start)
    assert registering.wait(5)
    side.route("late", echo_route)
    proceed.set()
    starting.result(5)
    assert caller.request("early", "main", n=1) == {"source": "caller", "kwargs": {"n": 1}}
    assert caller.request("late", "main", n=2) == {"source": "caller", "kwargs": {"n": 2}}


@pytest.mark.parametrize("kind", KINDS)
def test_ending_a_call_that_already_ended_touches_no_request_of_a_later_connection(
    make_side: Callable[..., SyncSide], kind: str
) -> None:
    """`expire` and `forget` of a call that already ended are no-ops, even after a reconnect.

    They do happen: the aio client's timeout timer can fire after the connection dropped
    and failed the call but before the waiting task resumed (a busy loop), and a waiter can
    be cancelled in that gap too. A request of the next connection must not be hit.
    """
    hub = winerp.Hub(port=0)
    hub.start()
    port = hub.port
    try:
        helper = make_side("sync", "peer", port)
        release = threading.Event()
        helper.route("hang", lambda source: release.wait(30))
        helper.route("slow", lambda source, seconds: time.sleep(seconds) or "answered")
        helper.start()
        side = make_side(kind, "main", port)
        side.start()
        core = side.core
        first, first_ended = core_request(core, "peer", "hang")
        second, second_ended = core_request(core, "peer", "hang")
        wait_for(lambda: sum(c["in_flight"] for c in hub.status()["clients"] if c["name"] == "main") == 2)
        dropped = time.monotonic()
        hub.stop()
        for ended in (first_ended, second_ended):
            assert isinstance(ended.exception(PROMPT), (errors.ConnectionLost, errors.PeerDisconnected))
        hub = winerp.Hub(port=port)
        hub.start()
        side.events.wait_event("ready", READY_AGAIN, after=dropped)
        wait_for(lambda: set(hub.clients) == {"main", "peer"}, timeout=READY_AGAIN)
        later = [core_request(core, "peer", "slow", {"seconds": 0.3})[1] for _ in range(2)]
        core.expire(first)
        core.forget(second)
        assert [ended.result(5) for ended in later] == ["answered", "answered"]
    finally:
        release.set()
        hub.stop()


# --- an aio client's loop reads its connection ---------------------------------------------


def _aio_server_in_thread(port: int, name: str, body: Callable[[winerp.aio.Client], Any]) -> threading.Thread:
    """Run an aio client with a plain route ``where`` on a loop of its own thread, then ``body``."""
    ready = threading.Event()

    async def main() -> None:
        client = winerp.aio.Client(name, port=port, reconnect=False)
        client.route("where")(lambda source: threading.current_thread().name)
        await client.start(timeout=5)
        ready.set()
        await body(client)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    return thread


def test_aio_client_with_a_blocked_loop_still_serves_plain_routes(hub: winerp.Hub) -> None:
    """The loop reads the socket; while user code blocks it, the core's own thread reads instead."""
    blocked = threading.Event()

    async def block(client: winerp.aio.Client) -> None:
        blocked.set()
        time.sleep(3)  # a blocking call on the loop, the classic bot bug
        await client.close()

    thread = _aio_server_in_thread(hub.port, "blocked-loop", block)
    with winerp.sync.Client("asker", port=hub.port, reconnect=False) as asker:
        assert blocked.wait(5)
        started = time.monotonic()
        assert asker.request("where", "blocked-loop", timeout=5).startswith("winerp-handler")
        assert time.monotonic() - started < 1.5
    thread.join(10)


def test_aio_client_whose_loop_ended_without_close_keeps_serving(hub: winerp.Hub) -> None:
    """A loop closed under a client that was never closed gives the socket back to the core."""

    async def leave(client: winerp.aio.Client) -> None:
        return None

    thread = _aio_server_in_thread(hub.port, "orphan", leave)
    thread.join(10)
    with winerp.sync.Client("asker", port=hub.port, reconnect=False) as asker:
        for _ in range(3):
            started = time.monotonic()
            assert asker.request("where", "orphan", timeout=5).startswith("winerp-handler")
            assert time.monotonic() - started < 1.0
