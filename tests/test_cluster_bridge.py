"""The NATS side of the cluster against a real ``nats-server -js``: the bridge and name claims."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("nats")

from cluster_tools import NatsServer, free_port, running_nats
from conftest import wait_for

from winerp.cluster import ClusterUnavailable
from winerp.cluster.bridge import Bridge
from winerp.cluster.names import NameRecord, Registry, Taken, decode_name_record
from winerp.cluster.subjects import decode_name, encode_name, name_key


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    yield from running_nats(tmp_path)


class HubSide:
    """Stands for the hub's loop: a thread that runs the bridge's inbox when woken."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.bridge: Bridge | None = None
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.wakes = 0
        self.downs = 0
        self.ups = 0

    def wake(self) -> None:
        self.wakes += 1
        self.event.set()

    def _run(self) -> None:
        while self.running:
            self.event.wait(0.1)
            self.event.clear()
            if self.bridge is not None:
                self.bridge.run_inbox()


@pytest.fixture
def hub_side() -> Iterator[HubSide]:
    side = HubSide()
    side.thread.start()
    yield side
    side.running = False
    side.thread.join(2)


def make_bridge(url: str, side: HubSide) -> Bridge:
    def down(_: Any) -> None:
        side.downs += 1

    def up(_: Any) -> None:
        side.ups += 1

    bridge = Bridge([url], wake=side.wake, on_down=down, on_up=up)
    side.bridge = bridge
    bridge.start(timeout=5)
    return bridge


def run(bridge: Bridge, coroutine: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coroutine, bridge.loop).result(10)


def test_names_cross_as_safe_tokens() -> None:
    for name in ["bot", "a.b c*>", "ünïcode ✓", "x" * 100, "=/+"]:
        token = encode_name(name)
        assert token.replace("-", "").replace("_", "").isalnum()
        assert decode_name(token) == name


def test_unreachable_nats_is_a_clear_error() -> None:
    bridge = Bridge([f"nats://127.0.0.1:{free_port()}"], wake=lambda: None, on_down=print, on_up=print)
    started = time.monotonic()
    with pytest.raises(ClusterUnavailable, match="cannot reach"):
        bridge.start(timeout=1)
    assert time.monotonic() - started < 10


def test_messages_cross_in_order_in_batches(nats_server: NatsServer, hub_side: HubSide) -> None:
    bridge = make_bridge(nats_server.url, hub_side)
    try:
        got: list[bytes] = []
        bridge.subscribe("winerp.t.x", got.append)
        run(bridge, bridge.nc.flush())
        payloads = [b"%d" % i for i in range(2000)]
        for payload in payloads:
            bridge.publish("winerp.t.x", payload)
        wait_for(lambda: len(got) == len(payloads), timeout=10)
        assert got == payloads
        # Handed over in batches: far fewer wake-ups of the hub's loop than messages.
        assert hub_side.wakes < len(payloads) / 4
    finally:
        bridge.stop()


def test_a_name_has_one_owner_and_expires_without_its_hub(nats_server: NatsServer, hub_side: HubSide) -> None:
    bridge = make_bridge(nats_server.url, hub_side)
    try:
        first = Registry(bridge.js, "t", "hub1", ttl=3.0)
        second = Registry(bridge.js, "t", "hub2", ttl=3.0)
        run(bridge, first.open())
        run(bridge, second.open())
        run(bridge, first.claim("bot", NameRecord("hub1", ["a"])))
        with pytest.raises(Taken) as taken:
            run(bridge, second.claim("bot", NameRecord("hub2", [])))
        assert taken.value.hub == "hub1"
        # The owner may claim again (new routes): still one owner.
        run(bridge, first.claim("bot", NameRecord("hub1", ["a", "b"])))

        changes: list[tuple[str, bytes | None]] = []
        snapshots: list[dict[str, bytes]] = []
        watch = asyncio.run_coroutine_threadsafe(
            second.watch(snapshots.append, lambda key, value: changes.append((key, value))), bridge.loop
        )
        wait_for(lambda: snapshots, timeout=5)
        assert decode_name_record(snapshots[0][name_key("bot")]).routes == ["a", "b"]

        # Refreshed, it outlives the ttl.
        for _ in range(3):
            time.sleep(1.0)
            assert run(bridge, first.refresh()) == []
        with pytest.raises(Taken):
            run(bridge, second.claim("bot", NameRecord("hub2", [])))
        # Its hub gone quiet, it expires within the ttl, the watch sees it, and it is free.
        gone = time.monotonic()
        wait_for(lambda: (name_key("bot"), None) in changes, timeout=10)
        assert time.monotonic() - gone < 3.0 + 2.5
        run(bridge, second.claim("bot", NameRecord("hub2", [])))
        # The old owner learns it lost the name at its next refresh.
        assert run(bridge, first.refresh()) == ["bot"]
        watch.cancel()
    finally:
        bridge.stop()


def test_released_names_are_free_at_once(nats_server: NatsServer, hub_side: HubSide) -> None:
    bridge = make_bridge(nats_server.url, hub_side)
    try:
        first = Registry(bridge.js, "t", "hub1")
        second = Registry(bridge.js, "t", "hub2")
        run(bridge, first.open())
        run(bridge, second.open())
        run(bridge, first.claim("w", NameRecord("hub1", [])))
        run(bridge, first.release("w"))
        run(bridge, second.claim("w", NameRecord("hub2", [])))
        # Clusters with different names never share a name.
        other = Registry(bridge.js, "other", "hub3")
        run(bridge, other.open())
        run(bridge, other.claim("w", NameRecord("hub3", [])))
    finally:
        bridge.stop()


def test_connection_loss_and_return_are_reported(tmp_path: Any, hub_side: HubSide) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    bridge = make_bridge(server.url, hub_side)
    try:
        server.kill()
        wait_for(lambda: hub_side.downs == 1, timeout=10)
        assert not bridge.connected
        bridge.publish("winerp.t.x", b"dropped")  # never raises, never queued for later
        server.start()
        wait_for(lambda: hub_side.ups == 1, timeout=15)
        assert bridge.connected
    finally:
        bridge.stop()
        server.kill()
