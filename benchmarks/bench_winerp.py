#!/usr/bin/env python3
"""winerp (this checkout) in the shared anchor harness: one JSON line per client flavour.

Topology, identical to the harness's ``bench_winerp_legacy.py`` for winerp 1.5.0: the hub
(``winerp.Hub``) runs in its own process, the responder (routes ``get_user`` and ``echo``,
an ``on_winerp_information`` counter) in a second, and the requester is this process. Every
request goes requester -> hub -> responder -> hub -> requester.

Variants:
  sync  requester and responder are ``winerp.sync.Client``; the 64-in-flight phase is the
        harness's way for a blocking client, a sliding window of 64 requests on one
        connection (``submit`` and the futures taken in order); a second phase, reported in
        the notes only, has 64 threads share the one client (it is thread-safe).
  aio   requester and responder are ``winerp.aio.Client`` with coroutine handlers; the
        64-in-flight phase is 64 asyncio tasks.

Payloads, counts, the inform counter, CPU placement and the result schema all come from
``benchlib`` (see its docstring), so the lines sit in one table with the anchors. Beyond the
schema, ``notes`` records the CPU seconds the hub and the responder spent in each phase.

Run it through the harness (``EXTRA=.../benchmarks/bench_winerp.py run_all.sh``) or on its
own: ``python benchmarks/bench_winerp.py [--variant sync|aio]``; ``WINERP_BENCH_HARNESS``
names the harness folder when it is not ``../shared/bench`` next to the repository.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import benchsupport as bs

B = bs.load_benchlib()

SCRIPT = __file__
VARIANTS = ["sync", "aio"]
SYSTEM_NAMES = {"sync": "winerp-2 sync", "aio": "winerp-2 aio"}
START_TIMEOUT_S = 15.0


# ----------------------------------------------------------------------------------- children


def role_responder_sync(port: int) -> None:
    winerp = bs.load_winerp()
    client = winerp.sync.Client("responder", B.HOST, port, reconnect=False)
    counter = bs.make_counter(B)

    @client.route
    def get_user(source: str, user_id: int) -> str:
        return B.small_response(user_id)

    @client.route
    def echo(source: str, blob: str) -> str:
        return blob

    @client.event
    def on_winerp_information(data: Any, source: str) -> None:
        if isinstance(data, dict) and data.get("end"):
            counter.end(data.get("n"))
        else:
            counter.hit()

    client.start(timeout=START_TIMEOUT_S)
    B.say("READY")
    counter.idle_thread()
    threading.Event().wait(B.CHILD_MAX_S)


async def role_responder_aio(port: int) -> None:
    winerp = bs.load_winerp()
    client = winerp.aio.Client("responder", B.HOST, port, reconnect=False)
    # The harness's own counter, as nats-py's callback uses it: coroutine handlers run one at a
    # time on the loop, in the order their informs came, so no lock (the sync role needs one).
    counter = B.InformCounter()

    @client.route
    async def get_user(source: str, user_id: int) -> str:
        return B.small_response(user_id)

    @client.route
    async def echo(source: str, blob: str) -> str:
        return blob

    @client.event
    async def on_winerp_information(data: Any, source: str) -> None:
        if isinstance(data, dict) and data.get("end"):
            counter.end(data.get("n"))
        else:
            counter.hit()

    await client.start(timeout=START_TIMEOUT_S)
    B.say("READY")
    idle = asyncio.create_task(counter.idle_loop())
    await asyncio.sleep(B.CHILD_MAX_S)
    idle.cancel()


# ------------------------------------------------------------------------------- orchestrator


class CpuLedger:
    """CPU seconds the hub, the responder and the requester spend in each phase (for ``notes``)."""

    def __init__(self, hub: Any, responder: Any) -> None:
        self.pids = {"hub": hub.pid, "resp": responder.pid, "req": os.getpid()}
        self.parts: list[str] = []
        self._label = ""
        self._t0 = 0.0
        self._c0: dict[str, float | None] = {}

    def start(self, label: str) -> None:
        self._label = label
        self._t0 = time.monotonic()
        self._c0 = {k: bs.proc_cpu_s(p) for k, p in self.pids.items()}

    def stop(self) -> None:
        wall = time.monotonic() - self._t0
        used = []
        for k, pid in self.pids.items():
            c0, c1 = self._c0.get(k), bs.proc_cpu_s(pid)
            used.append(f"{k} {c1 - c0:.2f}" if c0 is not None and c1 is not None else f"{k} ?")
        self.parts.append(f"{self._label} {wall:.1f}s wall: " + ", ".join(used))

    def note(self) -> str:
        return "cpu-s per phase: " + "; ".join(self.parts)


def inflight_threads(call: Callable[[], Any], inflight: int, max_n: int, max_s: float) -> tuple[int, float]:
    """``inflight`` threads issue requests back to back through one shared client.

    The same rule as ``benchlib.inflight_async``: stop issuing after ``max_n`` requests or
    ``max_s`` seconds; the elapsed time includes draining the last ones.
    """
    tickets = itertools.count()
    done = [0] * inflight
    errors: list[BaseException] = []
    go = threading.Barrier(inflight + 1)
    deadline = [0.0]

    def worker(slot: int) -> None:
        go.wait()
        n = 0
        try:
            while next(tickets) < max_n and time.perf_counter() < deadline[0]:
                call()
                n += 1
        except Exception as exc:  # noqa: BLE001 - re-raised by the caller
            errors.append(exc)
        finally:
            done[slot] = n

    threads = [
        threading.Thread(target=worker, args=(i,), name=f"bench-inflight-{i}", daemon=True) for i in range(inflight)
    ]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    deadline[0] = t0 + max_s
    go.wait()
    for t in threads:
        t.join(max(deadline[0] + 60 - time.perf_counter(), 0.1))
    elapsed = time.perf_counter() - t0
    if any(t.is_alive() for t in threads):
        raise TimeoutError("in-flight workers did not finish")
    if errors:
        raise errors[0]
    return sum(done), elapsed


def run_requester_sync(port: int, responder: Any, res: Any, cpu: CpuLedger) -> None:
    winerp = bs.load_winerp()
    client = winerp.sync.Client("requester", B.HOST, port, reconnect=False)
    client.start(timeout=START_TIMEOUT_S)
    try:

        def small() -> Any:
            return client.request("get_user", "responder", timeout=B.REQ_TIMEOUT_S, user_id=123)

        def big() -> Any:
            return client.request("echo", "responder", timeout=B.REQ_TIMEOUT_S, blob=B.BIG_BLOB)

        with B.phase(res, "rtt_small"):
            cpu.start("rtt_small")
            s = B.rtt_sync(small, B.RTT_N, B.RTT_WARMUP, B.RTT_MAX_S, check=lambda r: r == B.SMALL_RESP)
            cpu.stop()
            res["rtt_small_us"] = B.summarize_ns(s)
            res.note(f"rtt_small n={len(s)}")

        with B.phase(res, "rtt_64k"):
            cpu.start("rtt_64k")
            s = B.rtt_sync(big, B.BIG_N, B.BIG_WARMUP, B.BIG_MAX_S, check=lambda r: r == B.BIG_BLOB)
            cpu.stop()
            res["rtt_64k_us_p50"] = B.summarize_ns(s)["p50"]
            res.note(f"rtt_64k n={len(s)}")

        with B.phase(res, "inflight64"):
            # The harness's way for a blocking client: a sliding window of requests in
            # flight on one connection, sent with submit() and their futures taken in order.
            window: collections.deque[Any] = collections.deque()

            def send() -> None:
                window.append(client.submit("get_user", "responder", timeout=B.REQ_TIMEOUT_S, user_id=123))

            def recv() -> Any:
                return window.popleft().result(B.REQ_TIMEOUT_S)

            cpu.start("inflight64")
            done, el = B.pipelined_sync(send, recv, B.TPUT_INFLIGHT, B.TPUT_MAX, B.TPUT_SECONDS)
            cpu.stop()
            res["req_per_s_64_inflight"] = round(done / el)
            res.note(f"inflight64 (a window of {B.TPUT_INFLIGHT}, submit) {done} req in {el:.2f}s")

        with B.phase(res, "threads64"):
            # The other way to have 64 in flight: 64 threads calling request() (a threaded
            # web server's workers). Reported in the notes; the table's column is the window.
            cpu.start("threads64")
            done, el = inflight_threads(small, B.TPUT_INFLIGHT, B.TPUT_MAX, B.TPUT_SECONDS)
            cpu.stop()
            rate = round(done / el)
            res.note(f"threads64 ({B.TPUT_INFLIGHT} threads, one client) {done} req in {el:.2f}s: {rate} req/s")

        with B.phase(res, "inform"):

            def send(i: int) -> None:
                client.inform({"seq": i}, ["responder"])

            def send_end(n: int) -> None:
                client.inform({"end": True, "n": n}, ["responder"])

            cpu.start("inform")
            sent, t0 = B.inform_sync(send, send_end, B.INFORM_MAX, B.INFORM_SECONDS)
            rep = responder.wait_json("INFORM", B.INFORM_WAIT_S)
            cpu.stop()
            B.inform_rate(res, sent, t0, rep)
    finally:
        client.close()


async def run_requester_aio(port: int, responder: Any, res: Any, cpu: CpuLedger) -> None:
    winerp = bs.load_winerp()
    client = winerp.aio.Client("requester", B.HOST, port, reconnect=False)
    await client.start(timeout=START_TIMEOUT_S)
    try:

        def small() -> Any:
            return client.request("get_user", "responder", timeout=B.REQ_TIMEOUT_S, user_id=123)

        def big() -> Any:
            return client.request("echo", "responder", timeout=B.REQ_TIMEOUT_S, blob=B.BIG_BLOB)

        with B.phase(res, "rtt_small"):
            cpu.start("rtt_small")
            s = await B.rtt_async(small, B.RTT_N, B.RTT_WARMUP, B.RTT_MAX_S, check=lambda r: r == B.SMALL_RESP)
            cpu.stop()
            res["rtt_small_us"] = B.summarize_ns(s)
            res.note(f"rtt_small n={len(s)}")

        with B.phase(res, "rtt_64k"):
            cpu.start("rtt_64k")
            s = await B.rtt_async(big, B.BIG_N, B.BIG_WARMUP, B.BIG_MAX_S, check=lambda r: r == B.BIG_BLOB)
            cpu.stop()
            res["rtt_64k_us_p50"] = B.summarize_ns(s)["p50"]
            res.note(f"rtt_64k n={len(s)}")

        with B.phase(res, "inflight64"):
            cpu.start("inflight64")
            done, el = await B.inflight_async(small, B.TPUT_INFLIGHT, B.TPUT_MAX, B.TPUT_SECONDS)
            cpu.stop()
            res["req_per_s_64_inflight"] = round(done / el)
            res.note(f"inflight64 ({B.TPUT_INFLIGHT} tasks) {done} req in {el:.2f}s")

        with B.phase(res, "inform"):

            async def send(i: int) -> None:
                await client.inform({"seq": i}, ["responder"])

            async def send_end(n: int) -> None:
                await client.inform({"end": True, "n": n}, ["responder"])

            cpu.start("inform")
            sent, t0 = await B.inform_async(send, send_end, B.INFORM_MAX, B.INFORM_SECONDS)
            rep = await asyncio.to_thread(responder.wait_json, "INFORM", B.INFORM_WAIT_S)
            cpu.stop()
            B.inform_rate(res, sent, t0, rep)
    finally:
        await client.close()


def run_variant(variant: str) -> None:
    res = B.Result(SYSTEM_NAMES[variant], bs.winerp_description())
    res.note(f"hub=winerp.Hub; {variant} requester and responder; 2 hops each way")
    with B.Children() as kids:
        try:
            hub, port = bs.spawn_hub(B, START_TIMEOUT_S)
            kids.add(hub)
            responder = kids.add(
                B.spawn_role(SCRIPT, "responder-" + variant, str(port), name="responder", place="responder")
            )
            responder.wait_line("READY", START_TIMEOUT_S)
            cpu = CpuLedger(hub, responder)
            if variant == "sync":
                run_requester_sync(port, responder, res, cpu)
            else:
                asyncio.run(run_requester_aio(port, responder, res, cpu))
            res["hub_rss_mb"] = hub.peak_rss_mb()
            mem = bs.proc_mem_mb(hub.pid)
            res.note(f"hub at the end: rss {mem.get('rss')} MB, {mem.get('threads')} threads")
            res.note(cpu.note())
        except Exception as exc:  # noqa: BLE001 - a setup failure still emits a line
            res.note(f"FAILED: {type(exc).__name__}: {str(exc)[:300]}")
    res.emit()


def main() -> None:
    args = B.base_args(VARIANTS)
    if args.role:
        B.child_setup()
        if args.role == "responder-sync":
            role_responder_sync(int(args.args[0]))
        elif args.role == "responder-aio":
            asyncio.run(role_responder_aio(int(args.args[0])))
        else:
            raise SystemExit(f"unknown role {args.role}")
        return

    B.orchestrator_setup()
    logging.basicConfig(level=logging.WARNING)
    variants = [args.variant] if args.variant else VARIANTS
    try:
        bs.load_winerp()  # fail early and clearly, before any child starts
    except SystemExit as exc:
        # Still one line per variant, so the failure shows in the harness's table.
        for variant in variants:
            res = B.Result(SYSTEM_NAMES[variant], bs.winerp_description())
            res.note(f"FAILED: {exc}")
            res.emit()
        raise
    for variant in variants:
        B.log(f"== {SYSTEM_NAMES[variant]}")
        run_variant(variant)


if __name__ == "__main__":
    main()
