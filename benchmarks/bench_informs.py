#!/usr/bin/env python3
"""Informs through one hub: the rate, and what each inform costs the receiver's CPU.

Method: three processes, as a user runs them: a hub, a sender that sends ``--informs``
informs of ``{"seq": i}`` to one receiver as fast as it can (the aio sender lets its loop
turn every 256, as the shared harness does), and the receiver, whose handler counts them.
The receiver reports the rate from its first inform to its last and its own CPU time per
inform (``time.process_time()`` over the same span). ``--runs`` runs one after another; a
line each, then the medians. Nothing is asserted.

To compare two checkouts, run each one's copy in turn (the script imports the winerp of the
checkout it is in)::

    .venv/bin/python benchmarks/bench_informs.py [--informs 300000] [--sender aio] [--receiver aio] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import winerp

START_S = 10.0


def hub(port: int) -> None:
    winerp.Hub(port=port).serve_forever()


def send_sync(port: int, count: int) -> None:
    with winerp.sync.Client("sender", port=port, reconnect=False) as client:
        for i in range(count):
            client.inform({"seq": i}, "receiver")
        client.inform({"end": True}, "receiver")
        time.sleep(1.0)  # what is queued leaves before the close


async def send_aio(port: int, count: int) -> None:
    async with winerp.aio.Client("sender", port=port, reconnect=False) as client:
        for i in range(count):
            await client.inform({"seq": i}, "receiver")
            if i & 255 == 255:
                await asyncio.sleep(0)
        await client.inform({"end": True}, "receiver")
        await asyncio.sleep(1.0)


class Tally:
    """The receiver's count, from its first inform to its last."""

    def __init__(self) -> None:
        self.count = 0
        self.started = self.cpu_started = 0.0
        self.ended = self.cpu_ended = 0.0

    def hit(self, data: Any) -> bool:
        """Count one inform; True on the end marker."""
        if data.get("end"):
            self.ended, self.cpu_ended = time.perf_counter(), time.process_time()
            return True
        if not self.count:
            self.started, self.cpu_started = time.perf_counter(), time.process_time()
        self.count += 1
        return False

    def report(self) -> dict[str, float]:
        span = self.ended - self.started
        return {"per_s": self.count / span, "cpu_us": (self.cpu_ended - self.cpu_started) / self.count * 1e6}


def receive_sync(port: int, sender: list[str]) -> dict[str, float]:
    tally = Tally()
    done = threading.Event()
    client = winerp.sync.Client("receiver", port=port, reconnect=False)

    @client.event
    def on_winerp_information(data: Any, source: str) -> None:
        if tally.hit(data):
            done.set()

    with client:
        process = subprocess.Popen(sender)
        done.wait(120)
        process.wait()
    return tally.report()


async def receive_aio(port: int, sender: list[str]) -> dict[str, float]:
    tally = Tally()
    done = asyncio.Event()
    client = winerp.aio.Client("receiver", port=port, reconnect=False)

    @client.event
    async def on_winerp_information(data: Any, source: str) -> None:
        if tally.hit(data):
            done.set()

    async with client:
        process = subprocess.Popen(sender)
        await asyncio.wait_for(done.wait(), 120)
        await asyncio.to_thread(process.wait)
    return tally.report()


def one_run(args: argparse.Namespace, port: int) -> dict[str, float]:
    me = [sys.executable, __file__, "--port", str(port), "--informs", str(args.informs)]
    hub_process = subprocess.Popen([*me, "--role", "hub"])
    try:
        time.sleep(0.5)
        sender = [*me, "--role", f"send-{args.sender}"]
        if args.receiver == "sync":
            return receive_sync(port, sender)
        return asyncio.run(receive_aio(port, sender))
    finally:
        hub_process.kill()
        hub_process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--informs", type=int, default=300_000)
    parser.add_argument("--sender", choices=["sync", "aio"], default="aio")
    parser.add_argument("--receiver", choices=["sync", "aio"], default="aio")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--port", type=int, default=0, help="0: a free one per run")
    parser.add_argument("--role", default=None, help="internal: a child's role")
    args = parser.parse_args()
    if args.role == "hub":
        hub(args.port)
        return
    if args.role == "send-sync":
        send_sync(args.port, args.informs)
        return
    if args.role == "send-aio":
        asyncio.run(send_aio(args.port, args.informs))
        return
    results = []
    for run in range(args.runs):
        port = args.port or 47_000 + os.getpid() % 1000 + run
        result = one_run(args, port)
        results.append(result)
        print(json.dumps({"run": run + 1, **{k: round(v, 2) for k, v in result.items()}}), flush=True)
    print(
        f"{args.sender} sender, {args.receiver} receiver, {args.informs} informs, medians of {args.runs}: "
        f"{statistics.median(r['per_s'] for r in results):,.0f} informs/s, "
        f"receiver {statistics.median(r['cpu_us'] for r in results):.2f} µs CPU per inform"
    )


if __name__ == "__main__":
    main()
