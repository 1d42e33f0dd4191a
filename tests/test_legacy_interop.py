"""The real winerp 1.5.0, unmodified, against the new hub and the new sync and aio clients.

Each 1.5.0 client is a subprocess run by the interpreter of its own virtualenv (built on
demand by tests/legacy_env.py: ``winerp==1.5.0`` with ``websockets==13.1``), driven over
stdin/stdout by tests/legacy/winerp1_client.py. The hub and the new clients run in this
process. Without network the virtualenv cannot be built and these tests skip, except under
CI (``CI`` or ``WINERP_REQUIRE_LEGACY`` set), where they fail instead.
"""

from __future__ import annotations

import asyncio
import json
import os
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

try:
    from legacy_env import LegacyEnvUnavailable, legacy_environ, legacy_python
except ImportError:  # tests/ is a package, or the repository root is on sys.path
    from tests.legacy_env import LegacyEnvUnavailable, legacy_environ, legacy_python

pytestmark = [pytest.mark.legacy, pytest.mark.timeout(120)]

DRIVER = Path(__file__).resolve().parent / "legacy" / "winerp1_client.py"
#: "Promptly" in the API contract: well under a second; generous for a loaded CI machine.
PROMPT = 3.0


# --- a 1.5.0 client in a subprocess ------------------------------------------------------------


class LegacyError(Exception):
    """A command of the 1.5.0 client raised; ``kind`` is its exception class name."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class LegacyClient:
    """A winerp 1.5.0 client process, remote-controlled (see tests/legacy/winerp1_client.py)."""

    def __init__(self, python: str, name: str, port: int, workdir: Path) -> None:
        self.name = name
        self._stderr_path = workdir / f"{name}.stderr"
        self._stderr = open(self._stderr_path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [python, "-I", str(DRIVER), name, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            cwd=workdir,  # never the repository: its winerp would shadow 1.5.0
            env=legacy_environ(),
        )
        self._cond = threading.Condition()
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._taken = 0
        self._ids = iter(range(1, 1 << 30))
        self._reader = threading.Thread(target=self._read, name=f"legacy-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = json.loads(line)
            with self._cond:
                if "reply" in message:
                    self._replies[message["reply"]] = message
                else:
                    self._events.append(message)
                self._cond.notify_all()

    def stderr(self) -> str:
        self._stderr.flush()
        return self._stderr_path.read_text()

    def send(self, cmd: str, **fields: Any) -> int:
        """Send a command without waiting; `result` waits for its answer."""
        command_id = next(self._ids)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": command_id, "cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()
        return command_id

    def result(self, command_id: int, timeout: float = 15) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: command_id in self._replies, timeout):
                raise AssertionError(f"1.x client {self.name!r}: no answer in {timeout} s\n{self.stderr()}")
            reply = self._replies.pop(command_id)
        if "error" in reply:
            raise LegacyError(reply["error"], reply["message"])
        return reply["ok"]

    def call(self, cmd: str, timeout: float = 15, **fields: Any) -> Any:
        return self.result(self.send(cmd, **fields), timeout)

    def request(self, route: str, source: str, timeout: float = 30, **kwargs: Any) -> Any:
        return self.call("request", timeout=timeout + 5, route=route, source=source, kwargs=kwargs)

    def event(self, kind: str, timeout: float = 10, **match: Any) -> dict[str, Any]:
        """Wait for, and consume, the first event of ``kind`` whose fields match ``match``."""

        def find() -> dict[str, Any] | None:
            for event in self._events:
                if event["event"] == kind and all(event.get(k) == v for k, v in match.items()):
                    self._events.remove(event)
                    return event
            return None

        with self._cond:
            found = self._cond.wait_for(find, timeout)
        if found is None:
            raise AssertionError(f"1.x client {self.name!r}: no {kind} event {match} in {timeout} s\n{self.stderr()}")
        return found

    def events(self, kind: str) -> list[dict[str, Any]]:
        with self._cond:
            return [event for event in self._events if event["event"] == kind]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write('{"cmd": "exit"}\n')
                self.proc.stdin.close()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        self._stderr.close()


# --- the new clients, both flavours behind one blocking face ----------------------------------


class NewClient:
    """A winerp 2 client of either flavour with the test routes, driven with blocking calls.

    Routes: ``add(a, b)``, ``echo(**kwargs)``, ``boom(message)`` (raises ValueError),
    ``blob()`` (returns bytes), ``big()`` (returns 2**70), ``slow(seconds)``. It records the
    calls its routes get and the informations it receives.
    """

    def __init__(self, flavor: str, name: str, port: int, loop: asyncio.AbstractEventLoop | None) -> None:
        self.flavor = flavor
        self.name = name
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.informations: list[tuple[Any, str]] = []
        self.ready_events = 0
        self._cond = threading.Condition()
        self._loop = loop
        client: Any = (winerp.sync.Client if flavor == "sync" else winerp.aio.Client)(name, port=port, reconnect=False)
        self.client = client

        def record(route: str, source: str, kwargs: dict[str, Any]) -> None:
            with self._cond:
                self.calls.append((route, source, kwargs))
                self._cond.notify_all()

        def add(source: str, a: Any, b: Any) -> Any:
            record("add", source, {"a": a, "b": b})
            return a + b

        def echo(source: str, **kwargs: Any) -> Any:
            record("echo", source, kwargs)
            return {"source": source, "kwargs": kwargs}

        def boom(source: str, message: str = "boom from 2") -> Any:
            record("boom", source, {"message": message})
            raise ValueError(message)

        def blob(source: str) -> Any:
            record("blob", source, {})
            return b"\x00\x01"

        def big(source: str) -> Any:
            record("big", source, {})
            return 2**70

        def on_winerp_information(data: Any, source: str) -> None:
            with self._cond:
                self.informations.append((data, source))
                self._cond.notify_all()

        def on_winerp_ready() -> None:
            with self._cond:
                self.ready_events += 1
                self._cond.notify_all()

        if flavor == "sync":

            def slow(source: str, seconds: float) -> Any:
                record("slow", source, {"seconds": seconds})
                time.sleep(seconds)
                return "slow done"

            for handler in (add, echo, boom, blob, big, slow):
                client.route(handler)
            client.event(on_winerp_information)
            client.event(on_winerp_ready)
        else:
            # The aio client runs coroutine handlers on its loop: wrap the same handlers.
            def coroutine(handler: Callable[..., Any]) -> Callable[..., Any]:
                async def wrapper(source: str, **kwargs: Any) -> Any:
                    await asyncio.sleep(0)
                    return handler(source, **kwargs)

                wrapper.__name__ = handler.__name__
                return wrapper

            async def slow(source: str, seconds: float) -> Any:  # type: ignore[misc]
                record("slow", source, {"seconds": seconds})
                await asyncio.sleep(seconds)
                return "slow done"

            for handler in (add, echo, boom, blob, big):
                client.route(coroutine(handler))
            client.route(slow)

            async def on_winerp_information_async(data: Any, source: str) -> None:
                on_winerp_information(data, source)

            on_winerp_information_async.__name__ = "on_winerp_information"
            client.event(on_winerp_information_async)
            client.event(on_winerp_ready)

    def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, method)(*args, **kwargs)
        if self.flavor == "sync":
            return result
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(result, self._loop).result(90)

    def start(self) -> NewClient:
        self._run("start", timeout=10)
        return self

    def request(self, route: str, source: str, timeout: float = 30, **kwargs: Any) -> Any:
        return self._run("request", route, source, timeout=timeout, **kwargs)

    def inform(self, data: Any, destinations: Any = None) -> None:
        self._run("inform", data, destinations)

    def ping(self, name: str | None = None, timeout: float = 10) -> bool:
        return bool(self._run("ping", name, timeout=timeout))

    def close(self) -> None:
        self._run("close")

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        with self._cond:
            assert self._cond.wait_for(predicate, timeout), f"{self.name}: condition not met in {timeout} s"


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def legacy_interpreter() -> str:
    try:
        return legacy_python()
    except LegacyEnvUnavailable as exc:
        if os.environ.get("CI") or os.environ.get("WINERP_REQUIRE_LEGACY"):
            pytest.fail(f"the winerp 1.5.0 virtualenv is required here and cannot be built: {exc}")
        pytest.skip(f"winerp 1.5.0 virtualenv unavailable (needs PyPI once): {exc}")


@pytest.fixture
def legacy(legacy_interpreter: str, hub: winerp.Hub, tmp_path: Path) -> Iterator[Callable[..., LegacyClient]]:
    """Factory: ``legacy("name")`` starts a 1.5.0 client and waits until it is ready."""
    started: list[LegacyClient] = []

    def start(name: str, *, ready: bool = True) -> LegacyClient:
        client = LegacyClient(legacy_interpreter, name, hub.port, tmp_path)
        started.append(client)
        started_event = client.event("started", timeout=20)
        # The real 1.5.0 from its own virtualenv, not the winerp under test.
        assert Path(started_event["winerp"]).is_relative_to(Path(legacy_interpreter).parent.parent)
        assert started_event["websockets"] == "13.1"
        if ready:
            client.event("ready", timeout=10)
        return client

    yield start
    for client in started:
        client.close()


@pytest.fixture(scope="module")
def aio_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-aio-loop", daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.fixture(params=["sync", "aio"])
def new(
    request: pytest.FixtureRequest, hub: winerp.Hub, aio_loop: asyncio.AbstractEventLoop
) -> Iterator[Callable[..., NewClient]]:
    """Factory: ``new("name")`` starts a new client of the flavour under test."""
    started: list[NewClient] = []

    def start(name: str) -> NewClient:
        client = NewClient(request.param, name, hub.port, aio_loop).start()
        started.append(client)
        return client

    yield start
    for client in started:
        try:
            client.close()
        except Exception as exc:  # noqa: BLE001 - report, but clean up the others
            print(f"closing {client.name}: {exc!r}", file=sys.stderr)


def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- a 1.5.0 client calls a new client --------------------------------------------------------


def test_legacy_calls_new(legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]) -> None:
    target = new("new")
    old = legacy("old")
    assert old.request("add", "new", a=2, b=3) == 5
    nested = {"list": [1, 2.5, None, True, "s"], "map": {"k": [{"deep": 2**63}]}}
    assert old.request("echo", "new", x=nested) == {"source": "old", "kwargs": {"x": nested}}
    assert ("add", "old", {"a": 2, "b": 3}) in target.calls


def test_legacy_gets_remote_error_as_its_own_client_runtime_error(
    legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]
) -> None:
    new("new")
    old = legacy("old")
    started = time.monotonic()
    with pytest.raises(LegacyError) as caught:
        old.request("boom", "new", message="it broke")
    assert time.monotonic() - started < PROMPT
    assert caught.value.kind == "ClientRuntimeError"
    assert "it broke" in caught.value.message
    # 1.5.0 also fires on_winerp_error with the error text.
    assert "it broke" in old.event("error")["error"]


def test_legacy_gets_missing_destination_and_route_promptly(
    legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]
) -> None:
    new("new")
    old = legacy("old")
    for route, source, text in (("add", "ghost", "Destination not found."), ("nope", "new", "Route not found")):
        started = time.monotonic()
        with pytest.raises(LegacyError) as caught:
            old.request(route, source, a=1)
        assert time.monotonic() - started < PROMPT
        assert (caught.value.kind, caught.value.message) == ("ClientRuntimeError", text)


def test_new_answer_json_cannot_carry_reaches_legacy_as_an_error(
    legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]
) -> None:
    new("new")
    old = legacy("old")
    for route, fragment in (("blob", "bytes"), ("big", "64 bits")):
        started = time.monotonic()
        with pytest.raises(LegacyError) as caught:
            old.request(route, "new")
        assert time.monotonic() - started < PROMPT
        assert caught.value.kind == "ClientRuntimeError"
        assert fragment in caught.value.message
    # The new client that answered is unaffected.
    assert old.request("add", "new", a=1, b=1) == 2


def test_new_client_leaving_mid_request_fails_the_legacy_caller(
    legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]
) -> None:
    target = new("new")
    old = legacy("old")
    pending = old.send("request", route="slow", source="new", kwargs={"seconds": 5}, timeout=60)
    target.wait_for(lambda: any(call[0] == "slow" for call in target.calls))
    # close() may wait for its running handler; the 1.x caller must not.
    closing = threading.Thread(target=target.close)
    closing.start()
    with pytest.raises(LegacyError) as caught:
        old.result(pending, timeout=PROMPT)
    assert caught.value.kind == "ClientRuntimeError"
    assert "disconnected" in caught.value.message
    closing.join(10)


# --- a new client calls a 1.5.0 client --------------------------------------------------------


def test_new_calls_legacy(legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]) -> None:
    old = legacy("old")
    caller = new("new")
    assert caller.request("add", "old", a=2, b=3) == 5
    nested = {"list": [1, 2.5, None, True, "s"], "map": {"k": [{"deep": -(2**63)}]}, "tuple": (1, 2)}
    expected = {**nested, "tuple": [1, 2]}
    assert caller.request("echo", "old", x=nested) == {"source": "new", "kwargs": {"x": expected}}
    # The 1.x handler's ``source`` is the caller: the 1.x id/destination swap is right.
    assert ["add", "new", {"a": 2, "b": 3}] in old.call("calls")
    old.event("request")


def test_new_gets_legacy_handler_error(legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]) -> None:
    legacy("old")
    caller = new("new")
    started = time.monotonic()
    with pytest.raises(errors.ClientRuntimeError) as caught:
        caller.request("boom", "old", message="bad input")
    assert time.monotonic() - started < PROMPT
    assert caught.value.remote_type == "ValueError"
    assert caught.value.remote_message == "bad input"
    assert "Traceback" in caught.value.remote_traceback
    assert "bad input" in str(caught.value)
    # A 1.x handler returning what orjson cannot serialise: 1.x answers with an error.
    with pytest.raises(errors.ClientRuntimeError) as caught:
        caller.request("unjsonable", "old")
    assert "JSON" in str(caught.value) or "serializ" in str(caught.value)
    assert caller.request("add", "old", a=1, b=2) == 3


def test_new_gets_destination_not_found(legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]) -> None:
    legacy("old")
    caller = new("new")
    with pytest.raises(errors.DestinationNotFound):
        caller.request("add", "ghost", a=1, b=2)


def test_new_gets_route_not_found_from_legacy_then_a_clear_error(
    legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]
) -> None:
    legacy("old")
    caller = new("new")
    started = time.monotonic()
    with pytest.raises(errors.RouteNotFound) as caught:
        caller.request("nope", "old")
    assert time.monotonic() - started < PROMPT
    assert "nope" in str(caught.value)
    # winerp 1.5.0 stops reading after that (a 1.x bug): what follows fails at once and
    # says so, instead of timing out.
    started = time.monotonic()
    with pytest.raises(errors.PeerDisconnected) as lost:
        caller.request("add", "old", a=1, b=2)
    assert time.monotonic() - started < PROMPT
    assert "stopped reading" in str(lost.value)
    assert caller.ping("old") is False


def test_pseudo_object_answer_is_a_clear_error(
    legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]
) -> None:
    legacy("old")
    caller = new("new")
    with pytest.raises(errors.ClientRuntimeError) as caught:
        caller.request("pseudo", "old")
    assert "winerpObject" in str(caught.value)


def test_legacy_killed_mid_request_gives_peer_disconnected(
    legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]
) -> None:
    old = legacy("old")
    caller = new("new")
    outcome: dict[str, BaseException] = {}

    def call() -> None:
        try:
            caller.request("slow", "old", seconds=30)
        except BaseException as exc:  # noqa: BLE001 - checked below
            outcome["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    old.event("slow-started")
    killed = time.monotonic()
    old.kill()
    thread.join(PROMPT + 5)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), errors.PeerDisconnected), outcome
    assert time.monotonic() - killed < PROMPT + 2


def test_values_json_cannot_carry_fail_clearly_at_the_new_caller(
    legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]
) -> None:
    old = legacy("old")
    caller = new("new")
    for kwargs, fragment in (
        ({"data": b"\x00"}, "bytes"),
        ({"n": 2**64}, "64 bits"),
        ({"m": {1: "x"}}, "not a string"),
        ({"huge": "x" * (3 * 1024 * 1024)}, "at most"),
    ):
        started = time.monotonic()
        with pytest.raises(errors.WinerpError) as caught:
            caller.request("echo", "old", **kwargs)
        assert time.monotonic() - started < PROMPT
        assert fragment in str(caught.value), caught.value
        assert "old" in str(caught.value)
    # Nothing of it reached the 1.x client, which still works.
    assert caller.request("add", "old", a=1, b=2) == 3
    assert [call[0] for call in old.call("calls")] == ["add"]


# --- informs ----------------------------------------------------------------------------------


def test_informs_from_legacy(legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]) -> None:
    first, second = new("new1"), new("new2")
    old = legacy("old")
    old.call("inform", data={"to": "new1"}, destinations=["new1"])
    first.wait_for(lambda: ({"to": "new1"}, "old") in first.informations)
    # 1.x broadcast: an empty destination list.
    old.call("inform", data=[1, "everyone"], destinations=[])
    for client in (first, second):
        client.wait_for(lambda client=client: ([1, "everyone"], "old") in client.informations)
    # inform(data, None) sends [None], which reached nobody under the 1.x server; here it
    # means everyone, as None does for winerp 2 clients.
    old.call("inform", data="none means everyone", destinations=None)
    for client in (first, second):
        client.wait_for(lambda client=client: ("none means everyone", "old") in client.informations)
    assert ({"to": "new1"}, "old") not in second.informations


def test_informs_to_legacy(legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]) -> None:
    old = legacy("old")
    other = legacy("other")
    sender = new("new")
    sender.inform({"to": "old"}, ["old"])
    assert old.event("information", data={"to": "old"})["source"] == "new"
    sender.inform("to everyone", None)
    sender.inform("also everyone", [])
    for client in (old, other):
        assert client.event("information", data="to everyone")["source"] == "new"
        assert client.event("information", data="also everyone")["source"] == "new"
    assert not other.events("information")
    # JSON cannot carry it: the 1.x clients get nothing, and keep working.
    sender.inform({"blob": b"\x01"}, ["old"])
    sender.inform({"after": True}, "old")
    assert old.event("information", data={"after": True})["source"] == "new"
    assert not old.events("information")


# --- ping -------------------------------------------------------------------------------------


def test_ping_both_ways(legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]) -> None:
    old = legacy("old")
    caller = new("new")
    assert old.call("ping", name=None) is True
    assert old.call("ping", name="new") is True
    assert old.call("ping", name="ghost") is False
    assert caller.ping("old") is True
    assert caller.ping("ghost") is False
    assert caller.ping() is True


# --- duplicate names --------------------------------------------------------------------------


def test_legacy_on_hold_behind_new_then_promoted(
    legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]
) -> None:
    holder = new("shared")
    waiting = legacy("shared", ready=False)
    wait_until(lambda: waiting.call("state") == {"authorized": False, "on_hold": True})
    with pytest.raises(LegacyError) as caught:
        waiting.request("add", "anyone", a=1, b=1)
    assert caught.value.kind == "ClientNotReadyError"
    holder.close()
    waiting.event("ready")
    assert waiting.call("state") == {"authorized": True, "on_hold": False}
    caller = new("caller")
    assert caller.request("add", "shared", a=1, b=1) == 2


def test_new_on_hold_behind_legacy_then_promoted(
    legacy: Callable[..., LegacyClient], new: Callable[..., NewClient]
) -> None:
    holder = legacy("shared")
    waiting = new("shared")
    assert waiting.client.on_hold
    holder.kill()
    waiting.wait_for(lambda: waiting.ready_events >= 1)
    assert waiting.client.is_ready
    caller = legacy("caller")
    assert caller.request("add", "shared", a=2, b=2) == 4


# --- two 1.5.0 clients through the new hub ----------------------------------------------------


def test_two_legacy_clients_through_the_new_hub(legacy: Callable[..., LegacyClient]) -> None:
    alice, bob = legacy("alice"), legacy("bob")
    assert alice.request("add", "bob", a=20, b=22) == 42
    assert bob.request("echo", "alice", k=[1, {"x": None}]) == {"source": "bob", "kwargs": {"k": [1, {"x": None}]}}
    assert ["add", "alice", {"a": 20, "b": 22}] in bob.call("calls")
    with pytest.raises(LegacyError) as caught:
        alice.request("boom", "bob", message="bob broke")
    assert (caught.value.kind, caught.value.message) == ("ClientRuntimeError", "bob broke")
    with pytest.raises(LegacyError) as caught:
        alice.request("add", "ghost", a=1, b=1)
    assert caught.value.message == "Destination not found."
    with pytest.raises(LegacyError) as caught:
        alice.request("pseudo", "bob")
    assert "winerpObject" in caught.value.message
    # The 1.x server refused a request to oneself; this hub delivers it.
    assert alice.request("add", "alice", a=1, b=1) == 2
    assert alice.call("ping", name="bob") is True
    assert alice.call("ping", name=None) is True
    alice.call("inform", data={"hello": "bob"}, destinations=["bob"])
    assert bob.event("information", data={"hello": "bob"})["source"] == "alice"
    bob.call("inform", data="all", destinations=[])
    assert alice.event("information", data="all")["source"] == "bob"


def test_two_legacy_clients_with_one_name(legacy: Callable[..., LegacyClient]) -> None:
    first = legacy("same")
    second = legacy("same", ready=False)
    wait_until(lambda: second.call("state") == {"authorized": False, "on_hold": True})
    caller = legacy("caller")
    assert caller.request("add", "same", a=1, b=2) == 3
    first.kill()
    second.event("ready")
    assert second.call("state") == {"authorized": True, "on_hold": False}
    assert caller.request("add", "same", a=3, b=4) == 7
    assert ["add", "caller", {"a": 3, "b": 4}] in second.call("calls")


# --- the hub going away -----------------------------------------------------------------------


def test_hub_stop_reaches_legacy_clients(legacy_interpreter: str, tmp_path: Path) -> None:
    hub = winerp.Hub(port=0)
    hub.start()
    try:
        old = LegacyClient(legacy_interpreter, "old", hub.port, tmp_path)
        old.event("started", timeout=20)
        old.event("ready")
        hub.stop()
        # 1.5.0 reacts (on_winerp_disconnect, then its reconnect loop) only to a close that
        # websockets reports as an error: not to 1000 or 1001.
        old.event("disconnect", timeout=5)
    finally:
        hub.stop()
        old.close()


def test_idle_legacy_client_stays_connected(legacy_interpreter: str, tmp_path: Path) -> None:
    # A 1.5.0 client sends nothing while idle (it disables websocket pings) and answers only
    # websocket-level pings, so the hub must keep it alive with those, not drop it as silent.
    with winerp.Hub(port=0, heartbeat=0.2) as hub:
        old = LegacyClient(legacy_interpreter, "old", hub.port, tmp_path)
        try:
            old.event("started", timeout=20)
            old.event("ready")
            time.sleep(3)  # fifteen heartbeats
            assert "old" in hub.clients
            assert not old.events("disconnect")
            assert old.call("ping", name=None) is True
        finally:
            old.close()
