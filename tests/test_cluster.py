"""Hubs in a cluster over a real ``nats-server -js``: each hub its own ``winerp-hub --cluster`` process.

Rows of API.md "Hubs in a cluster (over NATS)", as a user of the clients sees them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("nats")

import winerp
import winerp.aio
from winerp import errors
from winerp.sync import Client

try:
    from cluster_tools import ROOT, NatsServer, hub_process, running_nats
    from conftest import wait_for
except ImportError:  # tests/ is a package
    from tests.cluster_tools import ROOT, NatsServer, hub_process, running_nats
    from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(90)

PROMPT = 1.5


class Hubs:
    """Hub processes of one cluster; each is ``(process, port)``."""

    def __init__(self, nats: NatsServer, count: int, cluster_name: str = "test") -> None:
        self.nats = nats
        self.cluster_name = cluster_name
        self.processes: list[subprocess.Popen[str]] = []
        self.ports: list[int] = []
        for _ in range(count):
            self.add()

    def add(self) -> int:
        process, port = hub_process(self.nats.url, cluster_name=self.cluster_name)
        self.processes.append(process)
        self.ports.append(port)
        return port

    def kill(self, index: int) -> None:
        self.processes[index].send_signal(signal.SIGKILL)
        self.processes[index].wait(10)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for index, process in enumerate(self.processes):
            try:
                _, err = process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                _, err = process.communicate()
            # Shown by pytest when a test fails.
            print(f"--- hub {index} (port {self.ports[index]}, exit {process.returncode}) ---\n{err}")


@pytest.fixture(scope="module")
def module_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    yield from running_nats(tmp_path_factory.mktemp("nats"))


@pytest.fixture(scope="module")
def two_hubs(module_nats: NatsServer) -> Iterator[Hubs]:
    """Two hubs of one cluster, shared by the tests that kill nothing."""
    hubs = Hubs(module_nats, 2)
    yield hubs
    hubs.stop()


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    yield from running_nats(tmp_path)


class Started:
    """Clients to close at the end of a test."""

    def __init__(self) -> None:
        self.clients: list[Client] = []

    def __call__(self, name: str, port: int, **options: Any) -> Client:
        client = Client(name, port=port, **options)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            client.close()


@pytest.fixture
def started() -> Iterator[Started]:
    clients = Started()
    yield clients
    clients.close()


def test_calls_informs_and_errors_cross_hubs(two_hubs: Hubs, started: Started) -> None:
    a, b = two_hubs.ports
    alice = started("alice-1", a)
    informed: list[tuple[Any, str]] = []

    @alice.route
    def hello(source: str, x: int = 0) -> str:
        return f"hello {source} {x}"

    @alice.route
    def boom(source: str) -> None:
        raise ValueError("bad user id 42")

    @alice.route
    def echo(source: str, value: Any = None) -> Any:
        return value

    @alice.event
    def on_winerp_information(data: Any, source: str) -> None:
        informed.append((data, source))

    alice.start(timeout=10)
    bob = started("bob-1", b)
    bob.start(timeout=10)
    wait_for(lambda: "alice-1" in bob.peers(), timeout=10)
    assert bob.request("hello", "alice-1", x=3, timeout=10) == "hello bob-1 3"
    payload = {"ids": [2**70, -1], 7: b"\x00\xff" * 1000, "when": (1, 2)}
    assert bob.request("echo", "alice-1", value=payload, timeout=10) == {
        "ids": [2**70, -1],
        7: b"\x00\xff" * 1000,
        "when": [1, 2],
    }
    with pytest.raises(errors.ClientRuntimeError, match=r"^ValueError: bad user id 42"):
        bob.request("boom", "alice-1", timeout=10)
    with pytest.raises(errors.RouteNotFound):
        bob.request("nope", "alice-1", timeout=10)
    began = time.monotonic()
    with pytest.raises(errors.DestinationNotFound):
        bob.request("hello", "nobody-1", timeout=10)
    assert time.monotonic() - began < PROMPT
    assert bob.ping("alice-1", timeout=10) is True
    assert bob.ping("nobody-1", timeout=10) is False
    assert bob.peers(routes=True)["alice-1"] == ["boom", "echo", "hello"]
    from winerp.sync.client import hub_status

    # The hub's own clients only; its cluster's in "hubs".
    assert [c["name"] for c in hub_status(bob, timeout=10)["clients"]] == ["bob-1"]
    bob.inform({"to": "alice"}, "alice-1")
    bob.inform("everyone")
    wait_for(lambda: len(informed) == 2, timeout=10)
    assert informed == [({"to": "alice"}, "bob-1"), ("everyone", "bob-1")]


def test_calls_between_clients_of_one_hub_never_leave_it(two_hubs: Hubs, started: Started) -> None:
    a, b = two_hubs.ports
    server = started("local-server-13", a)
    server.route("inc")(lambda source, x: x + 1)
    server.start(timeout=10)
    caller = started("local-caller-13", a)
    caller.start(timeout=10)
    remote = started("remote-caller-13", b)
    remote.start(timeout=10)
    wait_for(lambda: "local-server-13" in remote.peers(), timeout=10)
    before = two_hubs.nats.messages_in()
    for x in range(300):
        assert caller.request("inc", "local-server-13", x=x, timeout=10) == x + 1
    caller.inform("hi", "local-server-13")
    local = two_hubs.nats.messages_in() - before
    # Only the hubs' own lease renewals (a few a second) went through NATS meanwhile.
    assert local < 100, local
    before = two_hubs.nats.messages_in()
    for x in range(300):
        assert remote.request("inc", "local-server-13", x=x, timeout=10) == x + 1
    assert two_hubs.nats.messages_in() - before >= 600  # the same across hubs: each way over NATS


def test_request_many_and_presence_cover_the_cluster(two_hubs: Hubs, started: Started) -> None:
    a, b = two_hubs.ports
    joined: list[str] = []
    left: list[str] = []
    watcher = started("watcher-2", b)

    @watcher.event
    def on_winerp_peer_join(name: str) -> None:
        joined.append(name)

    @watcher.event
    def on_winerp_peer_leave(name: str) -> None:
        left.append(name)

    watcher.start(timeout=10)
    workers = []
    for index, port in enumerate([a, a, b]):
        worker = started(f"worker-2-{index}", port)
        worker.route("work")(lambda source, x=0, index=index: x * 10 + index)
        worker.start(timeout=10)
        workers.append(worker)
    wait_for(lambda: {"worker-2-0", "worker-2-1", "worker-2-2"} <= set(joined), timeout=10)
    wait_for(lambda: {"worker-2-0", "worker-2-1", "worker-2-2"} <= set(watcher.peers()), timeout=10)
    assert watcher.request_many("work", x=4, timeout=10) == {"worker-2-0": 40, "worker-2-1": 41, "worker-2-2": 42}
    results = watcher.request_many("work", ["worker-2-0", "gone-2"], x=1, timeout=10)
    assert results["worker-2-0"] == 10
    assert isinstance(results["gone-2"], errors.DestinationNotFound)
    workers[0].close()
    wait_for(lambda: "worker-2-0" in left, timeout=10)
    assert "worker-2-0" not in watcher.peers()


def test_a_name_is_unique_across_hubs_and_passes_in_order(two_hubs: Hubs, started: Started) -> None:
    a, b = two_hubs.ports
    holder = started("unique-3", a)
    holder.route("who")(lambda source: "first")
    holder.start(timeout=10)
    second = started("unique-3", b)
    second.route("who")(lambda source: "second")
    second.start(timeout=10)
    assert second.on_hold
    third = started("unique-3", a)
    third.route("who")(lambda source: "third")
    third.start(timeout=10)
    assert third.on_hold
    caller = started("caller-3", b)
    caller.start(timeout=10)
    assert caller.request("who", "unique-3", timeout=10) == "first"
    holder.close()
    wait_for(lambda: not second.is_ready or not third.on_hold or not second.on_hold, timeout=10)
    # One of the two waiting took over; the other still waits; never both.
    wait_for(lambda: second.on_hold != third.on_hold, timeout=10)
    first_successor, last = (second, third) if not second.on_hold else (third, second)
    expected = "second" if first_successor is second else "third"
    wait_for(lambda: _answers(caller, "unique-3") == expected, timeout=10)
    first_successor.close()
    wait_for(lambda: not last.on_hold, timeout=10)
    wait_for(lambda: _answers(caller, "unique-3") == ("third" if expected == "second" else "second"), timeout=10)


def _answers(caller: Client, name: str) -> Any:
    try:
        return caller.request("who", name, timeout=5)
    except winerp.WinerpError:
        return None


def test_aio_clients_across_hubs(two_hubs: Hubs) -> None:
    a, b = two_hubs.ports

    async def main() -> None:
        server = winerp.aio.Client("aio-server-4", port=a)
        got: list[Any] = []

        @server.route
        async def double(source: str, x: int) -> int:
            return 2 * x

        @server.event
        async def on_winerp_information(data: Any, source: str) -> None:
            got.append((data, source))

        caller = winerp.aio.Client("aio-caller-4", port=b)
        await server.start(timeout=10)
        await caller.start(timeout=10)
        try:
            deadline = time.monotonic() + 10
            while "aio-server-4" not in await caller.peers() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert await caller.request("double", "aio-server-4", x=21, timeout=10) == 42
            results = await asyncio.gather(*(caller.request("double", "aio-server-4", x=i) for i in range(200)))
            assert results == [2 * i for i in range(200)]
            assert await caller.ping("aio-server-4") is True
            with pytest.raises(errors.DestinationNotFound):
                await caller.request("double", "absent-4", x=1)
            await caller.inform([1, 2], ["aio-server-4"])
            while not got and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert got == [([1, 2], "aio-caller-4")]
        finally:
            await caller.close()
            await server.close()

    asyncio.run(main())


def test_status_shows_every_hub(two_hubs: Hubs, started: Started) -> None:
    a, b = two_hubs.ports
    started("status-5", a).start(timeout=10)
    output = subprocess.run(
        [sys.executable, "-m", "winerp", "status", "--port", str(b), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert output.returncode == 0, output.stderr
    status = json.loads(output.stdout)
    hubs = status["hubs"]
    assert sorted(h["address"] for h in hubs) == sorted(f"127.0.0.1:{p}" for p in (a, b))
    by_address = {h["address"]: h for h in hubs}
    assert "status-5" in by_address[f"127.0.0.1:{a}"]["clients"]
    text = subprocess.run(
        [sys.executable, "-m", "winerp", "status", "--port", str(b)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert f"127.0.0.1:{a}" in text.stdout and "status-5" in text.stdout


def test_a_killed_hub_ends_calls_and_frees_names(nats: NatsServer, started: Started) -> None:
    hubs = Hubs(nats, 2, cluster_name="kill")
    try:
        a, b = hubs.ports
        entered = threading.Event()
        release = threading.Event()
        slow = started("slow-6", a, reconnect=False)

        @slow.route
        def wait(source: str) -> None:
            entered.set()
            release.wait(30)

        slow.start(timeout=10)
        left: list[tuple[str, float]] = []
        caller = started("caller-6", b)

        @caller.event
        def on_winerp_peer_leave(name: str) -> None:
            left.append((name, time.monotonic()))

        caller.start(timeout=10)
        wait_for(lambda: "slow-6" in caller.peers(), timeout=10)
        outcome: list[BaseException] = []

        def call() -> None:
            try:
                caller.request("wait", "slow-6", timeout=60)
            except BaseException as exc:  # noqa: BLE001 - recorded for the test
                outcome.append(exc)

        thread = threading.Thread(target=call)
        thread.start()
        assert entered.wait(10)
        killed = time.monotonic()
        hubs.kill(0)
        thread.join(15)
        took = time.monotonic() - killed
        assert outcome and isinstance(outcome[0], errors.PeerDisconnected), outcome
        assert took < 10
        wait_for(lambda: any(name == "slow-6" for name, _ in left), timeout=10)
        # The name is free: a client taking it on the surviving hub is ready, not on hold.
        again = started("slow-6", b)
        again.start(timeout=10)
        assert not again.on_hold
        assert time.monotonic() - killed < 10
    finally:
        release.set()
        hubs.stop()


def test_nats_away_local_calls_go_on_cross_calls_fail_at_once_then_heal(nats: NatsServer, started: Started) -> None:
    hubs = Hubs(nats, 2, cluster_name="outage")
    try:
        a, b = hubs.ports
        server = started("server-7", a)
        server.route("inc")(lambda source, x=0: x + 1)
        server.start(timeout=10)
        near = started("near-7", a)
        near.start(timeout=10)
        far = started("far-7", b)
        far.start(timeout=10)
        wait_for(lambda: "server-7" in far.peers(), timeout=10)
        assert far.request("inc", "server-7", x=1, timeout=10) == 2
        twin = started("server-7", b)
        twin.start(timeout=10)
        assert twin.on_hold
        nats.kill()
        began = time.monotonic()
        # Cross-hub: a clear error at once, never the timeout.
        deadline = time.monotonic() + 10
        while True:
            try:
                far.request("inc", "server-7", x=1, timeout=30)
            except winerp.WinerpError as exc:
                assert "cluster is unreachable" in str(exc)
                break
            assert time.monotonic() < deadline, "cross-hub calls still went through with NATS down"
            time.sleep(0.05)
        assert time.monotonic() - began < 10
        # Same hub: goes on.
        assert near.request("inc", "server-7", x=5, timeout=10) == 6
        # A client on hold for a name held on another hub stays on hold: its holder lives on.
        assert twin.on_hold
        nats.start()
        wait_for(lambda: _heals(far), timeout=20)
        assert "server-7" in far.peers()
        assert twin.on_hold
    finally:
        hubs.stop()


def test_after_an_outage_a_name_has_one_owner(nats: NatsServer, started: Started) -> None:
    hubs = Hubs(nats, 2, cluster_name="twins")
    try:
        a, b = hubs.ports
        watcher = started("watcher-8", a)
        watcher.start(timeout=10)
        nats.kill()
        wait_for(lambda: _unreachable(watcher), timeout=10)
        # With NATS away each hub serves its own: both take the name.
        left = started("twin-8", a)
        left.route("side")(lambda source: "a")
        left.start(timeout=10)
        right = started("twin-8", b)
        right.route("side")(lambda source: "b")
        right.start(timeout=10)
        assert left.is_ready and right.is_ready
        nats.start()
        # Healed: one holds the name, the other waits on hold; calls from either hub agree.
        wait_for(lambda: left.on_hold != right.on_hold and (left.is_ready or right.is_ready), timeout=20)
        holder = "a" if not left.on_hold else "b"
        caller = started("caller-8", b)
        caller.start(timeout=10)
        wait_for(lambda: _answers_side(caller) == holder and _answers_side(watcher) == holder, timeout=15)
        assert left.on_hold != right.on_hold
    finally:
        hubs.stop()


def _unreachable(client: Client) -> bool:
    try:
        client.request("x", "absent-8", timeout=5)
    except winerp.WinerpError as exc:
        return "cluster is unreachable" in str(exc)
    return False


def _answers_side(caller: Client) -> Any:
    try:
        return caller.request("side", "twin-8", timeout=5)
    except winerp.WinerpError:
        return None


def _heals(far: Client) -> bool:
    try:
        return bool(far.request("inc", "server-7", x=1, timeout=5) == 2)
    except winerp.WinerpError:
        return False


def test_a_hub_without_cluster_loads_no_nats_code() -> None:
    code = (
        "import sys, winerp\n"
        "from winerp.sync import Client\n"
        "with winerp.Hub(port=0) as hub:\n"
        "    with Client('x', port=hub.port) as c:\n"
        "        assert c.ping()\n"
        "loaded = [m for m in sys.modules if m == 'nats' or m.startswith(('nats.', 'winerp.cluster'))]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_unreachable_cluster_fails_the_hub_command_with_one_line(tmp_path: Path) -> None:
    from cluster_tools import free_port

    result = subprocess.run(
        [sys.executable, "-m", "winerp", "--port", str(free_port()), "--cluster", f"nats://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert "cannot reach the cluster" in result.stderr


def test_a_client_with_several_hubs_fails_over_with_its_name_and_routes(nats: NatsServer, started: Started) -> None:
    hubs = Hubs(nats, 3, cluster_name="failover")
    try:
        a, b, c = hubs.ports
        roamer = started("roamer-9", 0, hubs=[f"127.0.0.1:{a}", f"ws://127.0.0.1:{b}", f"127.0.0.1:{c}"])
        readies: list[float] = []
        roamer.route("where")(lambda source: "here")

        @roamer.event
        def on_winerp_ready() -> None:
            readies.append(time.monotonic())

        roamer.start(timeout=10)
        caller = started("caller-9", c)
        caller.start(timeout=10)
        wait_for(lambda: _answers_where(caller) == "here", timeout=10)
        killed = time.monotonic()
        hubs.kill(0)
        # Ready again, on the next hub, within 10 s; callers on a third hub reach it there.
        wait_for(lambda: len(readies) == 2 and roamer.is_ready, timeout=10)
        assert readies[1] - killed < 10
        wait_for(lambda: _answers_where(caller) == "here", timeout=10)
        assert "roamer-9" in caller.peers()
    finally:
        hubs.stop()


def _answers_where(caller: Client) -> Any:
    try:
        return caller.request("where", "roamer-9", timeout=5)
    except winerp.WinerpError:
        return None


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:13255", ("127.0.0.1", 13255, False)),
        ("ws://example.org:80", ("example.org", 80, False)),
        ("wss://example.org:13254/", ("example.org", 13254, True)),
        ("[::1]:9000", ("::1", 9000, False)),
        ("localhost", ("localhost", 13254, False)),
    ],
)
def test_hub_addresses(address: str, expected: tuple[str, int, bool]) -> None:
    from winerp.client.opening import hub_address

    host, port, context = hub_address(address)
    assert (host, port, context is not None) == expected


@pytest.mark.parametrize("address", ["http://x:1", "x:notaport", "", "ws://x:1/path", "x:99999"])
def test_bad_hub_addresses_fail_at_once(address: str) -> None:
    with pytest.raises(ValueError, match="invalid hub address"):
        Client("bad", hubs=[address])
    with pytest.raises(ValueError):
        winerp.aio.Client("bad", hubs=[])


def test_aio_client_takes_the_first_hub_that_answers(hub: winerp.Hub) -> None:
    from cluster_tools import free_port

    async def main() -> None:
        client = winerp.aio.Client("first-10", hubs=[f"127.0.0.1:{free_port()}", f"127.0.0.1:{hub.port}"])
        began = time.monotonic()
        await client.start(timeout=10)
        try:
            assert client.is_ready
            assert time.monotonic() - began < 2  # the refused one costs no backoff
            assert "first-10" in hub.clients
        finally:
            await client.close()

    asyncio.run(main())


@pytest.mark.legacy
def test_winerp_1x_clients_take_part(two_hubs: Hubs, started: Started, tmp_path: Path) -> None:
    try:
        from legacy_env import LegacyEnvUnavailable, legacy_python
        from test_legacy_interop import LegacyClient
    except ImportError:  # tests/ is a package
        from tests.legacy_env import LegacyEnvUnavailable, legacy_python
        from tests.test_legacy_interop import LegacyClient
    try:
        python = legacy_python()
    except LegacyEnvUnavailable as exc:
        pytest.skip(f"winerp 1.5.0 virtualenv unavailable: {exc}")
    a, b = two_hubs.ports
    old = LegacyClient(python, "legacy-11", a, tmp_path)
    try:
        old.event("ready", timeout=20)
        new = started("new-11", b)
        new.route("double")(lambda source, x: 2 * x)
        new.start(timeout=10)
        wait_for(lambda: "legacy-11" in new.peers(), timeout=10)
        # New (hub B) -> 1.x (hub A), and 1.x -> new, across the hubs.
        assert new.request("add", "legacy-11", a=2, b=3, timeout=10) == 5
        assert old.request("double", "new-11", x=21) == 42
        new.inform({"n": 1}, "legacy-11")
        assert old.event("information", timeout=10)["data"] == {"n": 1}
        with pytest.raises(errors.ClientRuntimeError):
            new.request("boom", "legacy-11", timeout=10)
    finally:
        old.close()


def test_env_joins_a_cluster_and_other_cluster_names_never_meet(
    two_hubs: Hubs, started: Started, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = two_hubs.ports
    started("visible-12", a).start(timeout=10)
    started("seen-12", a).start(timeout=10)
    monkeypatch.setenv("WINERP_CLUSTER", two_hubs.nats.url)
    with winerp.Hub(port=0, cluster_name="elsewhere") as other, winerp.Hub(port=0) as plain:
        assert other.status()["hubs"][0]["this"] is True
        apart = started("visible-12", other.port)
        apart.start(timeout=10)
        # The same name, in another cluster on the same NATS server: not on hold, not seen.
        assert not apart.on_hold
        assert "seen-12" not in apart.peers()
        assert other.clients == ["visible-12"]
        assert "hubs" in plain.status()  # the environment applies to every hub of the process
    monkeypatch.delenv("WINERP_CLUSTER")
    with winerp.Hub(port=0) as alone:
        assert "hubs" not in alone.status()
