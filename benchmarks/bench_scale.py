#!/usr/bin/env python3
"""How the hub scales with idle clients: RTT between two clients, hub memory and idle CPU.

Topology: the hub in its own process; a responder (``winerp.sync.Client`` with route
``get_user``) in a second; the requester (``winerp.sync.Client``) is this process; the idle
clients live in further processes, one per step. The steps add idle clients until 0, 10,
100, 1,000 and 2,000 of them are connected (``--sizes``); at each step, once every idle
client is registered (checked with ``peers()``), it measures

  hub idle CPU %   CPU time of the hub process over ``--idle-seconds`` with no requests,
                   divided by that wall time (100% = one core). Idle clients still send
                   their heartbeats, so this is the price of keeping them connected.
  hub RSS MB       VmRSS of the hub after the idle window (VmHWM, the peak, is kept too).
  RTT p50/p90/p99  sequential small requests requester -> hub -> responder and back, the
                   same payload and counts as the harness (``benchlib``: 200 warm-up
                   requests, then 2,000 timed ones; ``BENCH_RTT_N`` ... change them).
  also             the idle clients' own CPU %, hub threads, connects/s of each step, idle
                   clients the hub dropped so far, and "other processes %": the share of
                   the machine used during the idle window by anything but this benchmark.

An idle client (``--idle-kind raw``, the default) is a light asyncio connection that speaks
the native protocol with ``winerp.protocol.frames``: websocket handshake with the winerp subprotocol,
``Hello``, then a ``Ping`` to the hub at the heartbeat interval the hub announced in
``Welcome``, answering pings and ignoring everything else, exactly the traffic of an idle
real client. With ``--idle-kind sync`` they are real ``winerp.sync.Client`` instances instead
(heavier for the machine: their threads and heartbeats compete with the measurement).

The whole sequence runs ``--runs`` times (default 2), each with a fresh hub; the table gives
the median of the runs at each size and the floor of issue 8: RTT p50 with 2,000 idle clients
at most twice the figure with none. JSON goes to ``benchmarks/results/`` (git-ignored).

Usage: ``python benchmarks/bench_scale.py [--runs N] [--sizes 0,10,100,1000,2000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import queue
import random
import statistics
import struct
import sys
import threading
import time
from typing import Any

import benchsupport as bs

B = bs.load_benchlib()

SCRIPT = __file__
START_TIMEOUT_S = 15.0
CONNECT_CONCURRENCY = 32
FLOOR_RATIO = 2.0


# ------------------------------------------------------------------------------- raw clients


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """One masked websocket frame, client to hub (RFC 6455)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    if n:
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        payload = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")
    return head + mask + payload


async def _ws_read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one websocket message: (opcode, payload); control frames come back on their own."""
    parts: list[bytes] = []
    first_opcode = 0
    while True:
        b0, b1 = await reader.readexactly(2)
        opcode, n = b0 & 0x0F, b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await reader.readexactly(8))
        mask = await reader.readexactly(4) if b1 & 0x80 else b""
        payload = await reader.readexactly(n)
        if mask and n:
            key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
            payload = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")
        if opcode >= 8:
            return opcode, payload
        if opcode:
            first_opcode = opcode
        parts.append(payload)
        if b0 & 0x80:
            return first_opcode, b"".join(parts)


class RawIdleClient:
    """An idle native-dialect client on a bare asyncio stream."""

    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.lost: str | None = None

    async def connect(self) -> float:
        """Open the websocket, register the name; return the heartbeat interval from `Welcome`."""
        from winerp.protocol import frames

        reader, writer = await asyncio.open_connection(B.HOST, self.port)
        self.writer = writer
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: {B.HOST}:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: {frames.SUBPROTOCOL}\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"{self.name}: handshake refused: {head[:80]!r}")
        writer.write(_ws_frame(2, frames.encode_frame(frames.Hello(self.name, []))))
        while True:
            opcode, payload = await _ws_read(reader)
            if opcode == 2:
                frame = frames.decode_frame(payload)
                if isinstance(frame, frames.Welcome):
                    if frame.on_hold:
                        raise RuntimeError(f"{self.name}: put on hold (name taken)")
                    self._reader = reader
                    return float(frame.heartbeat)
            elif opcode == 8:
                raise ConnectionError(f"{self.name}: closed during registration: {payload[2:]!r}")
            else:
                self._answer_control(opcode, payload)

    def _answer_control(self, opcode: int, payload: bytes) -> None:
        if opcode == 9 and self.writer is not None:
            self.writer.write(_ws_frame(10, payload))

    async def serve(self, heartbeat: float) -> None:
        """Stay connected: heartbeat the hub, answer pings, ignore the rest, until closed."""
        from winerp.protocol import frames

        assert self.writer is not None and self._reader is not None
        writer = self.writer
        beat = asyncio.create_task(self._heartbeat(heartbeat))
        try:
            while True:
                opcode, payload = await _ws_read(self._reader)
                if opcode == 2:
                    frame = frames.decode_frame(payload)
                    if isinstance(frame, frames.Ping):
                        writer.write(_ws_frame(2, frames.encode_frame(frames.Pong(frame.id, frame.peer))))
                elif opcode == 8:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 0
                    self.lost = f"closed by the hub: {code} {payload[2:].decode(errors='replace')}"
                    return
                else:
                    self._answer_control(opcode, payload)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self.lost = f"connection dropped: {type(exc).__name__}"
        finally:
            beat.cancel()

    async def _heartbeat(self, interval: float) -> None:
        from winerp.protocol import frames

        assert self.writer is not None
        ping = _ws_frame(2, frames.encode_frame(frames.Ping(0, frames.HUB)))
        # Clients connected in a burst would otherwise beat in step; real ones do not.
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            self.writer.write(ping)
            await asyncio.sleep(interval)


async def idle_raw(port: int, first: int, count: int) -> None:
    clients = [RawIdleClient(f"idle-{i}", port) for i in range(first, first + count)]
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    all_connected = asyncio.Event()
    connected = 0
    t0 = time.monotonic()

    async def live(c: RawIdleClient) -> None:
        nonlocal connected
        async with gate:
            heartbeat = await asyncio.wait_for(c.connect(), 60)
        connected += 1
        if connected == len(clients):
            all_connected.set()
        # Serve at once: a client that waited for the others would miss its heartbeats and
        # leave the hub's presence broadcasts unread.
        await c.serve(heartbeat)
        B.say("LOST", {"name": c.name, "why": c.lost})

    tasks = {asyncio.create_task(live(c)) for c in clients}
    waiter = asyncio.create_task(all_connected.wait())
    running = set(tasks)
    while not all_connected.is_set():
        done, running = await asyncio.wait({waiter, *running}, return_when=asyncio.FIRST_COMPLETED)
        running.discard(waiter)
        for t in done:
            exc = None if t is waiter else t.exception()
            if exc is not None:
                raise exc  # a failed connect ends the process, with its traceback
    B.say("READY", {"connected": len(clients), "seconds": round(time.monotonic() - t0, 2)})
    await asyncio.gather(*tasks)
    await asyncio.sleep(B.CHILD_MAX_S)


def idle_sync(port: int, first: int, count: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    winerp = bs.load_winerp()
    t0 = time.monotonic()

    def start(i: int) -> Any:
        client = winerp.sync.Client(f"idle-{i}", B.HOST, port, reconnect=False)
        client.start(timeout=60)
        return client

    with ThreadPoolExecutor(8) as pool:
        clients = list(pool.map(start, range(first, first + count)))
    B.say("READY", {"connected": len(clients), "seconds": round(time.monotonic() - t0, 2)})
    threading.Event().wait(B.CHILD_MAX_S)


# ---------------------------------------------------------------------------- other children


def role_responder(port: int) -> None:
    winerp = bs.load_winerp()
    client = winerp.sync.Client("responder", B.HOST, port, reconnect=False)

    @client.route
    def get_user(source: str, user_id: int) -> str:
        return B.small_response(user_id)

    client.start(timeout=START_TIMEOUT_S)
    B.say("READY")
    threading.Event().wait(B.CHILD_MAX_S)


# ------------------------------------------------------------------------------ orchestrator


def fd_count(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def drain_lost(child: Any) -> list[dict[str, Any]]:
    """Collect the LOST lines an idle process printed so far (without waiting)."""
    out = []
    while True:
        try:
            line = child.lines.get_nowait()
        except queue.Empty:
            return out
        if line is None:
            out.append({"name": child.name, "why": f"idle process exited rc={child.proc.poll()}"})
            return out
        if line.startswith("LOST"):
            out.append(json.loads(line[4:]))
        else:
            B.log(f"[{child.name}] {line}")


def wait_peers(client: Any, expected: int, timeout: float) -> int | None:
    """Wait until the requester sees ``expected`` other ready clients; return the last count."""
    if not hasattr(client, "peers"):
        return None
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        n = len(client.peers(timeout=10))
        if n >= expected:
            return n
        time.sleep(0.2)
    return n


def one_run(run: int, sizes: list[int], args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """One fresh hub through every size; appends a row per size to ``rows`` as it goes."""
    winerp = bs.load_winerp()
    with B.Children() as kids:
        hub, port = bs.spawn_hub(B, START_TIMEOUT_S)
        kids.add(hub)
        responder = kids.add(B.spawn_role(SCRIPT, "responder", str(port), place="responder"))
        responder.wait_line("READY", START_TIMEOUT_S)
        client = winerp.sync.Client("requester", B.HOST, port, reconnect=False)
        client.start(timeout=START_TIMEOUT_S)
        idle_procs: list[Any] = []
        lost: list[dict[str, Any]] = []
        try:
            connected = 0
            stage = "start"
            for size in sizes:
                row: dict[str, Any] = {"run": run, "idle_clients": size}
                stage = f"connecting up to {size} idle clients"
                B.log(f"run {run}: {stage}")
                if size > connected:
                    add = size - connected
                    proc = kids.add(
                        B.spawn_role(
                            SCRIPT,
                            "idle",
                            str(port),
                            str(connected),
                            str(add),
                            args.idle_kind,
                            name=f"idle-{connected}+{add}",
                            place="responder",
                        )
                    )
                    idle_procs.append(proc)
                    rep = proc.wait_json("READY", 60 + add * 0.1)
                    row["connect_s"] = rep["seconds"]
                    row["connects_per_s"] = round(add / max(rep["seconds"], 1e-6))
                    connected = size
                stage = f"measuring at {size} idle clients"
                seen = wait_peers(client, connected + 1, 30)
                row["peers_seen"] = seen
                time.sleep(args.settle)
                # Idle window: nothing but heartbeats.
                ours = [responder.pid, os.getpid(), *(p.pid for p in idle_procs)]
                busy0 = bs.machine_busy_cpu_s()
                hub0 = bs.proc_cpu_s(hub.pid)
                idle0 = sum(bs.proc_cpu_s(p.pid) or 0.0 for p in idle_procs)
                ours0 = sum(bs.proc_cpu_s(pid) or 0.0 for pid in ours)
                t0 = time.monotonic()
                time.sleep(args.idle_seconds)
                wall = time.monotonic() - t0
                hub1 = bs.proc_cpu_s(hub.pid)
                idle1 = sum(bs.proc_cpu_s(p.pid) or 0.0 for p in idle_procs)
                ours1 = sum(bs.proc_cpu_s(pid) or 0.0 for pid in ours)
                busy1 = bs.machine_busy_cpu_s()
                if hub0 is not None and hub1 is not None:
                    row["hub_idle_cpu_pct"] = round(100 * (hub1 - hub0) / wall, 1)
                row["idle_procs_cpu_pct"] = round(100 * (idle1 - idle0) / wall, 1)
                if busy0 is not None and busy1 is not None and hub0 is not None and hub1 is not None:
                    # Whatever else ran on the machine meanwhile (tick-accounted: ±1-2 % is noise).
                    others = (busy1 - busy0) - (hub1 - hub0) - (ours1 - ours0)
                    ncpu = len(os.sched_getaffinity(0))
                    row["others_cpu_pct"] = round(max(0.0, 100 * others / (wall * ncpu)), 1)
                mem = bs.proc_mem_mb(hub.pid)
                row["hub_rss_mb"] = mem.get("rss")
                row["hub_hwm_mb"] = mem.get("hwm")
                row["hub_threads"] = mem.get("threads")
                row["hub_fds"] = fd_count(hub.pid)

                def small() -> Any:
                    return client.request("get_user", "responder", timeout=B.REQ_TIMEOUT_S, user_id=123)

                samples = B.rtt_sync(small, B.RTT_N, B.RTT_WARMUP, B.RTT_MAX_S, check=lambda r: r == B.SMALL_RESP)
                row["rtt_us"] = B.summarize_ns(samples)
                row["rtt_n"] = len(samples)
                for p in idle_procs:
                    lost.extend(drain_lost(p))
                row["idle_lost_so_far"] = len(lost)
                B.log(
                    f"run {run} size {size}: rtt p50 {row['rtt_us']['p50']} µs, hub idle cpu "
                    f"{row.get('hub_idle_cpu_pct')}%, rss {row['hub_rss_mb']} MB, peers {seen}"
                )
                rows.append(row)
        except Exception as exc:
            raise RuntimeError(f"{stage}: {type(exc).__name__}: {exc}") from exc
        finally:
            client.close()
            if lost:
                B.log(f"run {run}: {len(lost)} idle clients lost, e.g. {lost[:3]}")


def summarize(rows: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    def med(vals: list[Any]) -> float | None:
        vals = [v for v in vals if v is not None]
        return round(statistics.median(vals), 1) if vals else None

    out = []
    for size in sizes:
        at = [r for r in rows if r["idle_clients"] == size]
        out.append(
            {
                "idle_clients": size,
                "runs": len(at),
                "rtt_p50_us": med([r["rtt_us"]["p50"] for r in at]),
                "rtt_p90_us": med([r["rtt_us"]["p90"] for r in at]),
                "rtt_p99_us": med([r["rtt_us"]["p99"] for r in at]),
                "hub_rss_mb": med([r.get("hub_rss_mb") for r in at]),
                "hub_idle_cpu_pct": med([r.get("hub_idle_cpu_pct") for r in at]),
                "idle_procs_cpu_pct": med([r.get("idle_procs_cpu_pct") for r in at]),
                "hub_threads": med([r.get("hub_threads") for r in at]),
                "connects_per_s": med([r.get("connects_per_s") for r in at]),
                "idle_lost": med([r.get("idle_lost_so_far") for r in at]),
                "others_cpu_pct": med([r.get("others_cpu_pct") for r in at]),
            }
        )
    return out


def fmt(v: Any, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def table(summary: list[dict[str, Any]]) -> str:
    lines = [
        "| idle clients | RTT p50 µs | p90 µs | p99 µs | hub RSS MB | hub idle CPU % | idle clients' CPU % "
        "| hub threads | connects/s | idle clients lost | other processes % |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        cells = [
            f"{s['idle_clients']:,}",
            fmt(s["rtt_p50_us"]),
            fmt(s["rtt_p90_us"]),
            fmt(s["rtt_p99_us"]),
            fmt(s["hub_rss_mb"], 1),
            fmt(s["hub_idle_cpu_pct"], 1),
            fmt(s["idle_procs_cpu_pct"], 1),
            fmt(s["hub_threads"]),
            fmt(s["connects_per_s"]),
            fmt(s["idle_lost"]),
            fmt(s["others_cpu_pct"], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def floor(summary: list[dict[str, Any]]) -> dict[str, Any] | None:
    base = next((s for s in summary if s["idle_clients"] == 0), None)
    top = max(summary, key=lambda s: s["idle_clients"])
    if base is None or top is base or not base["rtt_p50_us"] or top["rtt_p50_us"] is None:
        return None
    r = round(top["rtt_p50_us"] / base["rtt_p50_us"], 2)
    return {
        "check": f"RTT p50 with {top['idle_clients']} idle clients <= {FLOOR_RATIO}x with none",
        "ratio": r,
        "ok": r <= FLOOR_RATIO,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", default=None, help=argparse.SUPPRESS)
    ap.add_argument("role_args", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--runs", type=int, default=2, help="fresh-hub repetitions (default 2)")
    ap.add_argument("--sizes", default="0,10,100,1000,2000", help="idle-client counts, ascending")
    ap.add_argument("--idle-kind", choices=["raw", "sync"], default="raw", help="what an idle client is")
    ap.add_argument("--idle-seconds", type=float, default=float(os.environ.get("BENCH_IDLE_S", 5.0)))
    ap.add_argument("--settle", type=float, default=1.0, help="seconds to wait after connecting")
    ap.add_argument("--out", default=None, help="JSON file (default benchmarks/results/scale-<time>.json)")
    args = ap.parse_args()

    if args.role:
        B.child_setup()
        if args.role == "responder":
            role_responder(int(args.role_args[0]))
        elif args.role == "idle":
            bs.raise_nofile()
            port, first, count, kind = args.role_args
            if kind == "raw":
                asyncio.run(idle_raw(int(port), int(first), int(count)))
            else:
                idle_sync(int(port), int(first), int(count))
        else:
            raise SystemExit(f"unknown role {args.role}")
        return 0

    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    B.orchestrator_setup()
    bs.raise_nofile()
    bs.load_winerp()
    # A run outlives the harness's default child lifetime when thousands of clients connect.
    os.environ.setdefault("BENCH_CHILD_MAX_S", "1200")
    started = time.gmtime()
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for run in range(args.runs):
        try:
            one_run(run, sizes, args, rows)
        except Exception as exc:  # noqa: BLE001 - recorded; the next run may still work
            problems.append(f"run {run}: {type(exc).__name__}: {str(exc)[:500]}")
            B.log(problems[-1])
    summary = summarize(rows, sizes)
    verdict = floor(summary)
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", started),
        "machine": bs.machine_description(),
        "winerp": bs.winerp_description(),
        "config": {
            "runs": args.runs,
            "sizes": sizes,
            "idle_kind": args.idle_kind,
            "idle_seconds": args.idle_seconds,
            "rtt_n": B.RTT_N,
            "rtt_warmup": B.RTT_WARMUP,
            "pin": B.PIN,
        },
        "summary": summary,
        "floor": verdict,
        "problems": problems,
        "rows": rows,
    }
    out = args.out
    if out is None:
        (bs.BENCH_DIR / "results").mkdir(parents=True, exist_ok=True)
        out = str(bs.BENCH_DIR / "results" / f"scale-{time.strftime('%Y%m%dT%H%M%SZ', started)}.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(f"medians of {args.runs} runs; idle clients: {args.idle_kind}; {report['winerp']}")
    print()
    print(table(summary))
    if verdict:
        print()
        print(f"floor: {verdict['check']}: {verdict['ratio']}x -> {'pass' if verdict['ok'] else 'FAIL'}")
    print(f"JSON: {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
