#!/usr/bin/env python3
"""Hubs in a cluster: cross-hub calls against same-hub calls, a plain hub, and plain NATS.

Method: one ``nats-server -js`` and three hubs, each its own process: A and B in one cluster,
P without a cluster. A responder process holds ``resp-a`` on hub A, ``resp-p`` on hub P and a
plain nats-py request/reply responder. This process (asyncio clients) measures, in rounds
that alternate between the variants so that drift and noise hit all of them alike:

* ``plain hub``: a client of P calls ``resp-p`` (the single-hub baseline);
* ``same hub``: a client of A calls ``resp-a`` (clustered hub, the call stays in A);
* ``cross hub``: a client of B calls ``resp-a`` (B -> NATS -> A and back, on the hubs'
  direct connections, which their loops poll);
* with ``--threaded`` only, ``cross hub, nats-py thread``: two more hubs, C and D, in a
  cluster of their own, pass frames through nats-py on its thread (``WINERP_CLUSTER_NO_DIRECT=1``,
  the way of a hub that cannot open its direct connection); a client of D calls ``resp-c``
  on C. Two more processes change the machine's load, so the other ratios of such a run
  are not those of the floors;
* ``plain NATS``: nats-py ``request`` to the nats-py responder (the engine's own floor).

For each: the median round trip of a lone small request (p50 over ``--rtt`` calls) and the
requests per second with 64 in flight (``--calls`` calls), then the medians over the rounds,
and the hubs' CPU time per request (from ``/proc``, during the 64-in-flight phase).

Everything shares the machine's cores (on 2 cores: the requester, the hubs, NATS and the
responder all compete), so this shows ratios within one run, not aggregate scaling: more
hubs add capacity only where there are cores for them.

    python benchmarks/bench_cluster.py [--rounds 3] [--rtt 1000] [--calls 5000] [--threaded]

``--failures N`` measures failures instead, N times each: a hub SIGKILLed with a call in flight
to one of its clients (time to ``PeerDisconnected`` at the caller on another hub; time until
the name is free, i.e. a client taking it on another hub is ready; time until a client with
``hubs=[dead, alive]`` is ready again), and the NATS server SIGKILLed (time until a cross-hub
call fails, saying the cluster is unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import winerp  # noqa: E402
import winerp.aio  # noqa: E402

INFLIGHT = 64
PAYLOAD = {"user_id": 42, "name": "small"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` (Linux ``/proc``), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_hub(nats_url: str | None, cluster_name: str = "bench", **env_extra: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    command = [sys.executable, "-m", "winerp", "--port", str(port), "--log-level", "WARNING"]
    if nats_url:
        command += ["--cluster", nats_url, "--cluster-name", cluster_name]
    env = dict(os.environ, PYTHONPATH=str(ROOT), **env_extra)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    if "listening" not in process.stdout.readline():
        raise SystemExit("a hub did not start")
    return process, port


RESPONDER = """
import asyncio, sys
import nats, winerp.aio

async def main(nats_url, ports):
    clients = []
    for name, port in ports:
        client = winerp.aio.Client(name, port=int(port), reconnect=False)
        client.route("echo")(echo)
        await client.start(timeout=15)
        clients.append(client)
    nc = await nats.connect(nats_url)

    async def answer(msg):
        await msg.respond(msg.data)

    await nc.subscribe("bench.echo", cb=answer)
    await nc.flush()
    print("READY", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

async def echo(source, **kwargs):
    return kwargs

asyncio.run(main(sys.argv[1], [arg.split("=") for arg in sys.argv[2:]]))
"""


async def p50_rtt(call: Callable[[], Awaitable[Any]], count: int) -> float:
    times = []
    for _ in range(count):
        began = time.perf_counter()
        await call()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


async def rate(call: Callable[[], Awaitable[Any]], count: int) -> float:
    per_worker = count // INFLIGHT

    async def worker() -> None:
        for _ in range(per_worker):
            await call()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(INFLIGHT)))
    return per_worker * INFLIGHT / (time.perf_counter() - began)


async def measure(args: argparse.Namespace, nats_url: str, hubs: dict[str, tuple[Any, int]]) -> None:
    import nats

    plain = winerp.aio.Client("req-p", port=hubs["P"][1])
    same = winerp.aio.Client("req-a", port=hubs["A"][1])
    cross = winerp.aio.Client("req-b", port=hubs["B"][1])
    clients = [plain, same, cross]
    if "D" in hubs:
        threaded = winerp.aio.Client("req-d", port=hubs["D"][1])
        clients.append(threaded)
    for client in clients:
        await client.start(timeout=15)
    while "resp-a" not in await cross.peers():
        await asyncio.sleep(0.05)
    nc = await nats.connect(nats_url)
    body = b"\x82\xa7user_id*\xa4name\xa5small"  # the same small msgpack map

    async def nats_call() -> Any:
        return await nc.request("bench.echo", body, timeout=10)

    variants: dict[str, tuple[Callable[[], Awaitable[Any]], list[str]]] = {
        "plain hub": (lambda: plain.request("echo", "resp-p", **PAYLOAD), ["P"]),
        "same hub": (lambda: same.request("echo", "resp-a", **PAYLOAD), ["A"]),
        "cross hub": (lambda: cross.request("echo", "resp-a", **PAYLOAD), ["A", "B"]),
        "plain NATS": (nats_call, []),
    }
    if "D" in hubs:
        while "resp-c" not in await threaded.peers():
            await asyncio.sleep(0.05)
        variants["cross hub, nats-py thread"] = (lambda: threaded.request("echo", "resp-c", **PAYLOAD), ["C", "D"])
    results: dict[str, dict[str, list[float]]] = {name: {"rtt": [], "rate": [], "cpu": []} for name in variants}
    for call, _ in variants.values():  # warm up
        for _ in range(200):
            await call()
    for round_number in range(args.rounds):
        order = list(variants)
        if round_number % 2:
            order.reverse()
        for name in order:
            call, hub_names = variants[name]
            results[name]["rtt"].append(await p50_rtt(call, args.rtt))
            before = {h: cpu_seconds(hubs[h][0].pid) for h in hub_names}
            results[name]["rate"].append(await rate(call, args.calls))
            calls = args.calls // INFLIGHT * INFLIGHT
            for h in hub_names:
                results[name]["cpu"].append((cpu_seconds(hubs[h][0].pid) - before[h]) / calls)
    await nc.close()
    for client in clients:
        await client.close()
    report(results, args)


def report(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    print(
        f"\n{args.rounds} rounds, medians; p50 of {args.rtt} lone calls; {args.calls} calls with {INFLIGHT} in flight"
    )
    print(f"{os.cpu_count()} cores shared by every process: ratios within this run, not aggregate scaling\n")
    print("| variant | small RTT p50 (µs) | req/s, 64 in flight | hub CPU per request, per hub (µs) |")
    print("|---|---:|---:|---:|")
    medians: dict[str, dict[str, float]] = {}
    for name, series in results.items():
        medians[name] = {key: statistics.median(values) if values else 0.0 for key, values in series.items()}
        cpu = f"{medians[name]['cpu'] * 1e6:.0f}" if series["cpu"] else "-"
        print(f"| {name} | {medians[name]['rtt'] * 1e6:.0f} | {medians[name]['rate']:.0f} | {cpu} |")
    same, cross, plain = medians["same hub"], medians["cross hub"], medians["plain hub"]
    print()
    print(f"same hub (clustered) / plain hub, req/s: {same['rate'] / plain['rate']:.2f} (floor: about 1)")
    print(f"same hub (clustered) / plain hub, RTT:   {same['rtt'] / plain['rtt']:.2f} (floor: about 1)")
    print(f"cross hub / same hub, RTT p50:           {cross['rtt'] / same['rtt']:.2f} (floor: at most 2.5)")
    print(f"cross hub / same hub, req/s:             {cross['rate'] / same['rate']:.2f} (floor: at least 0.5)")
    print(f"cross hub / plain NATS, RTT p50:         {cross['rtt'] / medians['plain NATS']['rtt']:.2f}")
    if "cross hub, nats-py thread" in medians:
        threaded = medians["cross hub, nats-py thread"]
        print(f"cross hub, nats-py thread / same hub, RTT p50: {threaded['rtt'] / same['rtt']:.2f}")
        print(f"cross hub, nats-py thread / same hub, req/s:   {threaded['rate'] / same['rate']:.2f}")


def failure_trial(nats_url: str) -> dict[str, float]:
    import signal
    import threading

    from winerp.sync import Client

    (dead, dead_port), (alive, alive_port) = start_hub(nats_url), start_hub(nats_url)
    clients: list[Client] = []
    release = threading.Event()
    try:
        held = Client("held", port=dead_port, reconnect=False)
        held.route("wait")(lambda source: release.wait(60))
        roamer = Client("roamer", hubs=[f"127.0.0.1:{dead_port}", f"127.0.0.1:{alive_port}"])
        caller = Client("caller", port=alive_port)
        clients += [held, roamer, caller]
        for client in clients:
            client.start(timeout=15)
        while not {"held", "roamer"} <= set(caller.peers()):
            time.sleep(0.01)
        roamer_ready: list[float] = []

        @roamer.event
        def on_winerp_ready() -> None:
            roamer_ready.append(time.monotonic())

        ended: list[float] = []

        def call() -> None:
            try:
                caller.request("wait", "held", timeout=60)
            except winerp.PeerDisconnected:
                ended.append(time.monotonic())

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.3)
        killed = time.monotonic()
        dead.send_signal(signal.SIGKILL)
        dead.wait(10)
        thread.join(30)
        taker = Client("held", port=alive_port)
        clients.append(taker)
        taker.start(timeout=15)
        while taker.on_hold:
            time.sleep(0.01)
        free = time.monotonic()
        while not roamer_ready or not roamer.is_ready:
            time.sleep(0.01)
        return {
            "PeerDisconnected after a hub's SIGKILL (s)": ended[0] - killed,
            "its names free (s)": free - killed,
            "hubs=[...] client ready again (s)": roamer_ready[-1] - killed,
        }
    finally:
        release.set()
        for client in clients:
            client.close()
        for process in (dead, alive):
            if process.poll() is None:
                process.terminate()
                process.wait(10)


def measure_failures(count: int, server: str, store: str) -> None:
    results: dict[str, list[float]] = {}
    for _ in range(count):
        port = free_port()
        nats_server = subprocess.Popen(
            [server, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            for key, value in failure_trial(f"nats://127.0.0.1:{port}").items():
                results.setdefault(key, []).append(value)
        finally:
            nats_server.kill()
            nats_server.wait(10)
    print(f"\n{count} trials: median (min - max)\n")
    print("| failure | median | min | max |")
    print("|---|---:|---:|---:|")
    for key, values in results.items():
        print(f"| {key} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rtt", type=int, default=1000, help="lone calls per RTT sample")
    parser.add_argument("--calls", type=int, default=5000, help="calls per throughput sample")
    parser.add_argument("--threaded", action="store_true", help="add hubs that pass frames through nats-py's thread")
    parser.add_argument("--failures", type=int, default=0, help="measure failure timings, this many times each")
    args = parser.parse_args()
    server = shutil.which("nats-server") or str(Path(sys.executable).parent / "nats-server")
    store = tempfile.mkdtemp(prefix="winerp-bench-nats-")
    if args.failures:
        try:
            measure_failures(args.failures, server, store)
        finally:
            shutil.rmtree(store, ignore_errors=True)
        return
    nats_port = free_port()
    nats_url = f"nats://127.0.0.1:{nats_port}"
    processes: list[subprocess.Popen[Any]] = []
    try:
        nats_server = subprocess.Popen(
            [server, "-js", "-a", "127.0.0.1", "-p", str(nats_port), "-sd", store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(nats_server)
        time.sleep(0.5)
        hubs = {"A": start_hub(nats_url), "B": start_hub(nats_url), "P": start_hub(None)}
        if args.threaded:
            threaded = {"WINERP_CLUSTER_NO_DIRECT": "1"}
            hubs["C"] = start_hub(nats_url, "bench-threaded", **threaded)
            hubs["D"] = start_hub(nats_url, "bench-threaded", **threaded)
        processes += [process for process, _ in hubs.values()]
        ports = [f"resp-{name.lower()}={hubs[name][1]}" for name in ("A", "C", "P") if name in hubs]
        responder = subprocess.Popen(
            [sys.executable, "-c", RESPONDER, nats_url, *ports],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        processes.append(responder)
        assert responder.stdout is not None
        if "READY" not in responder.stdout.readline():
            raise SystemExit("the responder did not start")
        asyncio.run(measure(args, nats_url, hubs))
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
