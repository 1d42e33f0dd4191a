"""Soak: client processes make concurrent requests for minutes while a chaos loop kills things.

Not part of the default test run: this is the long check of issue 5 ("every request ends
exactly once"), run by hand::

    .venv/bin/python benchmarks/soak.py                  # 60 s
    .venv/bin/python benchmarks/soak.py --duration 300 --workers 6 --concurrency 8

Topology: a hub process (``python -m winerp``) and ``--workers`` client processes, sync and
aio in turn, all on one port. Every worker runs ``--concurrency`` callers (threads or asyncio
tasks) that call the other workers' routes in a loop: ``echo`` (answers its key), ``slow``
(answers after a pause, sometimes longer than the caller's timeout, so late replies arrive
after a `RequestTimeout`) and ``boom`` (raises, so `ClientRuntimeError`). Each request carries
a key that is unique over the whole run. Half the callers use ``submit`` and wait on its
future with no bound of their own, so a future that never ended would show as a request
left open.

Chaos: every ``--chaos-interval`` seconds (jittered) one of: SIGKILL the hub and restart it
on the same port (at once or after up to 4 s), SIGTERM the hub and restart it, SIGKILL a
chaos worker and start a new one under the same name, SIGSTOP a chaos worker for 1-2 s (not
noticed) or 6-8 s (the hub cuts it off) and SIGCONT it. The first two workers are stable
(never signalled): they are the survivors whose threads and memory are watched.

What each worker checks, and the soak asserts (exit status 1 on any violation):

* every request ends exactly once: a call returns or raises once (by construction), so the
  check is that no request is left open when the worker stops (every call ended, within its
  timeout plus slack), that each ending is one of the allowed outcomes, and that a result or
  a remote error carries the key of the request that asked for it (no crossed answers);
* nothing is executed twice: each worker counts executions per key, and a key run twice is
  a violation (the library never re-sends);
* survivors do not grow: threads and RSS at the end are no higher than the peak of the first
  half of the run (plus a small margin), and each has exactly one reader thread.

Reported: requests attempted, sent (not refused at once while the client was down),
outcomes by kind, kills survived, and the time from a restarted hub accepting connections to
each stable worker being ready again (median and max). Written to ``results/`` as JSON too.
Requests in flight inside a worker at the moment it is SIGKILLed die with it and are counted
apart ("lost with their process"); the other side of them is counted (PeerDisconnected).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(1, str(REPO_ROOT))

#: Outcomes a request may end with in this soak. Anything else is a violation.
ALLOWED = {
    "result",
    "ClientRuntimeError",
    "RequestTimeout",
    "PeerDisconnected",
    "ConnectionLost",
    "DestinationNotFound",
}
#: Raised at once, before anything is sent: counted as attempts, not as requests sent.
REFUSED = "ClientNotReadyError"
REQUEST_TIMEOUT = 5.0
SHORT_TIMEOUT = 0.3


# --- worker ----------------------------------------------------------------------------------


class Ledger:
    """A worker's accounting, shared by its callers; thread-safe."""

    def __init__(self, name: str, incarnation: int) -> None:
        self.name = name
        self.prefix = f"{name}/{incarnation}/"
        self.lock = threading.Lock()
        self.seq = itertools.count(1)
        self.attempted = 0
        self.outcomes: Counter[str] = Counter()
        self.open: dict[str, tuple[float, float]] = {}  # key -> (started, timeout)
        self.executions: Counter[str] = Counter()
        self.violations: list[str] = []
        self.late_endings = 0

    def begin(self, timeout: float) -> str:
        key = self.prefix + str(next(self.seq))
        with self.lock:
            self.attempted += 1
            self.open[key] = (time.monotonic(), timeout)
        return key

    def end(self, key: str, outcome: str, problem: str | None = None) -> None:
        with self.lock:
            began = self.open.pop(key, None)
            if began is None:
                self.violations.append(f"{key} ended twice ({outcome})")
                return
            self.outcomes[outcome] += 1
            if outcome not in ALLOWED and outcome != REFUSED:
                self.violations.append(f"{key}: unexpected outcome {outcome}")
            if problem:
                self.violations.append(f"{key}: {problem}")
            started, timeout = began
            if time.monotonic() - started > timeout + 3.0:
                self.late_endings += 1

    def executed(self, key: str) -> None:
        with self.lock:
            self.executions[key] += 1
            if self.executions[key] == 2:
                self.violations.append(f"{key} executed twice at {self.name}")

    def overdue(self, slack: float) -> list[str]:
        now = time.monotonic()
        with self.lock:
            return [k for k, (started, timeout) in self.open.items() if now - started > timeout + slack]

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            threads = threading.enumerate()
            return {
                "attempted": self.attempted,
                "outcomes": dict(self.outcomes),
                "open": len(self.open),
                "executions": sum(self.executions.values()),
                "duplicates": sum(1 for n in self.executions.values() if n > 1),
                "violations": self.violations[:20],
                "violation_count": len(self.violations),
                "late_endings": self.late_endings,
                "threads": len(threads),
                "readers": sum(1 for t in threads if t.name.startswith("winerp-reader-")),
                "rss": _rss(),
            }


def _rss() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


_print_lock = threading.Lock()


def say(**fields: Any) -> None:
    with _print_lock:
        print(json.dumps(fields), flush=True)


def plan(rng: random.Random, others: list[str]) -> tuple[str, str, dict[str, Any], float]:
    """Pick the next call: (target, route, kwargs without the key, timeout)."""
    target = rng.choice(others)
    roll = rng.random()
    if roll < 0.70:
        return target, "echo", {"pad": "x" * rng.choice((0, 10, 1000))}, REQUEST_TIMEOUT
    if roll < 0.90:
        seconds = rng.uniform(0.05, 0.6)
        return target, "slow", {"seconds": seconds}, rng.choice((SHORT_TIMEOUT, REQUEST_TIMEOUT))
    return target, "boom", {}, REQUEST_TIMEOUT


def judge(route: str, key: str, value: Any = None, error: BaseException | None = None) -> tuple[str, str | None]:
    """Classify an ending and say what is wrong with it, if anything."""
    from winerp import errors

    if error is None:
        if route == "boom":
            return "result", "boom returned instead of raising"
        return "result", None if value == key else f"answer {value!r} for key {key!r}"
    outcome = type(error).__name__
    if isinstance(error, errors.ClientRuntimeError):
        if route != "boom":
            return outcome, f"{route} raised remotely: {error.remote_type}: {error.remote_message}"
        if error.remote_message != key:
            return outcome, f"boom's error carries {error.remote_message!r} for key {key!r}"
    return outcome, None


def run_worker(args: argparse.Namespace) -> None:
    ledger = Ledger(args.name, args.incarnation)
    others = [name for name in args.peers.split(",") if name != args.name]
    stopping = threading.Event()
    if args.kind == "sync":
        _sync_worker(args, ledger, others, stopping)
    else:
        asyncio.run(_aio_worker(args, ledger, others, stopping))


def _watch_stdin(stopping: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    stopping.set()


def _report_loop(ledger: Ledger, stopping: threading.Event) -> None:
    reported: set[str] = set()
    while not stopping.wait(1.0):
        overdue = [key for key in ledger.overdue(slack=10.0) if key not in reported]
        if overdue:
            reported.update(overdue)
            with ledger.lock:
                ledger.violations.extend(f"{key} still open well past its timeout" for key in overdue)
        say(stats=ledger.snapshot())


def _final(ledger: Ledger, drained: bool) -> None:
    snapshot = ledger.snapshot()
    if not drained:
        snapshot["violations"].append(f"{snapshot['open']} request(s) never ended")
        snapshot["violation_count"] += 1
    say(final=snapshot)


def _sync_worker(args: argparse.Namespace, ledger: Ledger, others: list[str], stopping: threading.Event) -> None:
    from winerp import errors
    from winerp.sync import Client

    client = Client(args.name, port=args.port)

    @client.route
    def echo(source: str, key: str, pad: str) -> str:
        ledger.executed(key)
        return key

    @client.route
    def slow(source: str, key: str, seconds: float) -> str:
        ledger.executed(key)
        time.sleep(seconds)
        return key

    @client.route
    def boom(source: str, key: str) -> None:
        ledger.executed(key)
        raise ValueError(key)

    @client.event
    def on_winerp_ready() -> None:
        say(ready=time.time())

    @client.event
    def on_winerp_disconnect() -> None:
        say(disconnect=time.time())

    def caller(number: int) -> None:
        rng = random.Random(f"{args.name}/{args.incarnation}/{number}")
        while not stopping.is_set():
            target, route, kwargs, timeout = plan(rng, others)
            key = ledger.begin(timeout)
            try:
                if number % 2:  # submit, and a wait with no bound of its own: the future ends by itself
                    value = client.submit(route, target, timeout=timeout, key=key, **kwargs).result()
                else:
                    value = client.request(route, target, timeout=timeout, key=key, **kwargs)
            except errors.ClientNotReadyError:
                ledger.end(key, REFUSED)
                stopping.wait(0.05)
                continue
            except Exception as exc:  # noqa: BLE001 - classified
                ledger.end(key, *judge(route, key, error=exc))
            else:
                ledger.end(key, *judge(route, key, value))
            stopping.wait(rng.uniform(0, 0.01))

    client.start(timeout=60)
    threading.Thread(target=_watch_stdin, args=(stopping,), daemon=True).start()
    threading.Thread(target=_report_loop, args=(ledger, stopping), daemon=True).start()
    callers = [threading.Thread(target=caller, args=(n,), name=f"caller-{n}") for n in range(args.concurrency)]
    for thread in callers:
        thread.start()
    stopping.wait()
    deadline = time.monotonic() + REQUEST_TIMEOUT + 10
    for thread in callers:
        thread.join(max(0.0, deadline - time.monotonic()))
    drained = not any(thread.is_alive() for thread in callers)
    _final(ledger, drained)
    client.close()
    os._exit(0 if drained else 1)


async def _aio_worker(args: argparse.Namespace, ledger: Ledger, others: list[str], stopping: threading.Event) -> None:
    from winerp import errors
    from winerp.aio import Client

    client = Client(args.name, port=args.port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    @client.route
    async def echo(source: str, key: str, pad: str) -> str:
        ledger.executed(key)
        return key

    @client.route
    async def slow(source: str, key: str, seconds: float) -> str:
        ledger.executed(key)
        await asyncio.sleep(seconds)
        return key

    @client.route
    async def boom(source: str, key: str) -> None:
        ledger.executed(key)
        raise ValueError(key)

    @client.event
    async def on_winerp_ready() -> None:
        say(ready=time.time())

    @client.event
    async def on_winerp_disconnect() -> None:
        say(disconnect=time.time())

    async def caller(number: int) -> None:
        rng = random.Random(f"{args.name}/{args.incarnation}/{number}")
        while not stop.is_set():
            target, route, kwargs, timeout = plan(rng, others)
            key = ledger.begin(timeout)
            try:
                if number % 2:  # submit: the future ends by itself
                    value = await client.submit(route, target, timeout=timeout, key=key, **kwargs)
                else:
                    value = await client.request(route, target, timeout=timeout, key=key, **kwargs)
            except errors.ClientNotReadyError:
                ledger.end(key, REFUSED)
                await asyncio.sleep(0.05)
                continue
            except Exception as exc:  # noqa: BLE001 - classified
                ledger.end(key, *judge(route, key, error=exc))
            else:
                ledger.end(key, *judge(route, key, value))
            await asyncio.sleep(rng.uniform(0, 0.01))

    await client.start(timeout=60)

    def watch() -> None:
        _watch_stdin(stopping)
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch, daemon=True).start()
    threading.Thread(target=_report_loop, args=(ledger, stopping), daemon=True).start()
    tasks = [asyncio.create_task(caller(n)) for n in range(args.concurrency)]
    await stop.wait()
    _, pending = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 10)
    drained = not pending
    _final(ledger, drained)
    await client.close()
    os._exit(0 if drained else 1)


# --- orchestrator ----------------------------------------------------------------------------


class Child:
    """A child process whose stdout lines are collected with the wall-clock time they came."""

    def __init__(self, args: list[str], log_dir: Path, label: str) -> None:
        self.label = label
        self.stderr_path = log_dir / f"{label}.log"
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115 - closed in reap()
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
        )
        self.lines: list[tuple[float, str]] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append((time.time(), line.strip()))
                self.changed.notify_all()

    def wait_line(self, predicate: Any, timeout: float) -> tuple[float, str] | None:
        deadline = time.monotonic() + timeout
        with self.changed:
            seen = 0
            while True:
                for when, line in self.lines[seen:]:
                    if predicate(line):
                        return when, line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return None
                self.changed.wait(min(left, 0.5))

    def records(self) -> list[tuple[float, dict[str, Any]]]:
        with self.changed:
            lines = list(self.lines)
        out = []
        for when, line in lines:
            try:
                out.append((when, json.loads(line)))
            except ValueError:
                pass
        return out

    def send(self, text: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(text + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def signal(self, signum: int) -> None:
        try:
            self.proc.send_signal(signum)
        except ProcessLookupError:
            pass

    def reap(self, timeout: float = 10) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self.reader.join(5)
        self._stderr.close()


class Soak:
    def __init__(self, args: argparse.Namespace, log_dir: Path) -> None:
        self.args = args
        self.log_dir = log_dir
        self.port = args.port or _free_port()
        self.names = [f"{'sync' if i % 2 == 0 else 'aio'}-{i}" for i in range(args.workers)]
        self.stable = self.names[:2]
        self.chaotic = self.names[2:]
        self.rng = random.Random(args.seed)
        self.hub: Child | None = None
        self.hub_count = 0
        self.hub_listening: list[float] = []  # wall time each hub (after the first) accepted connections
        self.workers: dict[str, Child] = {}
        self.incarnations: Counter[str] = Counter()
        self.finished: list[Child] = []  # killed incarnations
        self.actions: Counter[str] = Counter()

    def start_hub(self) -> None:
        self.hub_count += 1
        hub = Child(
            ["-m", "winerp", "--port", str(self.port), "--log-level", "WARNING"], self.log_dir, f"hub-{self.hub_count}"
        )
        seen = hub.wait_line(lambda line: "listening" in line, 30)
        if seen is None:
            sys.exit(f"the hub did not start; see {hub.stderr_path}")
        if self.hub_count > 1:
            self.hub_listening.append(seen[0])
        self.hub = hub

    def start_worker(self, name: str) -> None:
        self.incarnations[name] += 1
        kind = name.split("-")[0]
        worker = Child(
            [
                __file__,
                "worker",
                "--kind",
                kind,
                "--name",
                name,
                "--incarnation",
                str(self.incarnations[name]),
                "--port",
                str(self.port),
                "--peers",
                ",".join(self.names),
                "--concurrency",
                str(self.args.concurrency),
            ],
            self.log_dir,
            f"{name}-{self.incarnations[name]}",
        )
        self.workers[name] = worker

    def kill_hub(self, signum: int) -> None:
        assert self.hub is not None
        self.hub.signal(signum)
        self.hub.reap(15)
        pause = self.rng.choice((0.0, 0.0, self.rng.uniform(0.5, 4.0)))
        time.sleep(pause)
        self.start_hub()

    def kill_worker(self) -> None:
        name = self.rng.choice(self.chaotic)
        worker = self.workers[name]
        worker.signal(signal.SIGKILL)
        worker.reap()
        self.finished.append(worker)
        time.sleep(self.rng.uniform(0, 2))
        self.start_worker(name)

    def stop_worker(self) -> None:
        name = self.rng.choice(self.chaotic)
        worker = self.workers[name]
        worker.signal(signal.SIGSTOP)
        time.sleep(self.rng.choice((self.rng.uniform(1, 2), self.rng.uniform(6, 8))))
        worker.signal(signal.SIGCONT)

    def chaos(self, until: float) -> None:
        while True:
            wait = self.args.chaos_interval * self.rng.uniform(0.5, 1.5)
            if time.monotonic() + wait >= until:
                break
            time.sleep(wait)
            roll = self.rng.random()
            if roll < 0.25:
                self.actions["hub SIGKILL"] += 1
                self.kill_hub(signal.SIGKILL)
            elif roll < 0.40:
                self.actions["hub SIGTERM"] += 1
                self.kill_hub(signal.SIGTERM)
            elif not self.chaotic:
                continue
            elif roll < 0.75:
                self.actions["worker SIGKILL"] += 1
                self.kill_worker()
            else:
                self.actions["worker SIGSTOP"] += 1
                self.stop_worker()
        time.sleep(max(0.0, until - time.monotonic()))

    def run(self) -> int:
        args = self.args
        self.start_hub()
        for name in self.names:
            self.start_worker(name)
        for name, worker in self.workers.items():
            if worker.wait_line(lambda line: '"ready"' in line, 60) is None:
                sys.exit(f"worker {name} did not get ready; see {worker.stderr_path}")
        began = time.monotonic()
        print(
            f"soak: {len(self.names)} workers x {args.concurrency} callers, port {self.port}, "
            f"{args.duration:.0f} s of chaos every ~{args.chaos_interval:.0f} s",
            flush=True,
        )
        self.chaos(began + args.duration)
        # Let everyone come back, then stop every worker and collect its final account.
        for worker in self.workers.values():
            worker.signal(signal.SIGCONT)
        time.sleep(REQUEST_TIMEOUT)
        for worker in self.workers.values():
            worker.send("stop")
        finals: dict[str, dict[str, Any]] = {}
        for name, worker in self.workers.items():
            seen = worker.wait_line(lambda line: line.startswith('{"final"'), REQUEST_TIMEOUT + 30)
            finals[name] = json.loads(seen[1])["final"] if seen else {"violations": ["no final report"]}
            worker.reap(15)
        assert self.hub is not None
        self.hub.signal(signal.SIGTERM)
        self.hub.reap(15)
        return self.report(finals, time.monotonic() - began)

    def report(self, finals: dict[str, dict[str, Any]], elapsed: float) -> int:
        survivors = list(finals.values())
        killed = [_last_stats(worker) for worker in self.finished]
        outcomes: Counter[str] = Counter()
        for account in survivors + killed:
            outcomes.update(account.get("outcomes", {}))
        attempted = sum(a.get("attempted", 0) for a in survivors + killed)
        ended = sum(outcomes.values())
        refused = outcomes.get(REFUSED, 0)
        lost = sum(a.get("open", 0) for a in killed)
        violations = [f"{name}: {v}" for name, a in finals.items() for v in a.get("violations", [])]
        unended = sum(a.get("open", 0) for a in survivors)
        if unended:
            violations.append(f"{unended} request(s) of surviving workers never ended")
        for name in self.stable:
            violations.extend(f"{name}: {problem}" for problem in _growth(self.workers[name], finals.get(name, {})))
        ready_times = self.ready_times()
        summary = {
            "duration_s": round(elapsed, 1),
            "workers": self.names,
            "concurrency": self.args.concurrency,
            "attempted": attempted,
            "sent": attempted - refused,
            "refused_at_once_while_down": refused,
            "ended": ended,
            "outcomes": dict(sorted(outcomes.items(), key=lambda kv: -kv[1])),
            "lost_with_their_process": lost,
            "executions": sum(a.get("executions", 0) for a in survivors + killed),
            "duplicate_executions": sum(a.get("duplicates", 0) for a in survivors + killed),
            "late_endings": sum(a.get("late_endings", 0) for a in survivors),
            "chaos": dict(self.actions),
            "kills_survived": sum(self.actions.values()),
            "hub_restarts": len(self.hub_listening),
            "time_to_ready_s": {
                "median": round(statistics.median(ready_times), 3) if ready_times else None,
                "max": round(max(ready_times), 3) if ready_times else None,
                "n": len(ready_times),
            },
            "survivors": {
                name: {k: final.get(k) for k in ("attempted", "late_endings", "threads", "readers", "rss")}
                for name, final in finals.items()
            },
            "stable": self.stable,
            "violations": violations[:50],
            "violation_count": len(violations),
        }
        print(json.dumps(summary, indent=2))
        results = BENCH_DIR / "results"
        results.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        (results / f"soak-{stamp}.json").write_text(json.dumps(summary, indent=2))
        print("PASS: every request of the surviving workers ended exactly once" if not violations else "FAIL")
        return 1 if violations else 0

    def ready_times(self) -> list[float]:
        """For each hub restart and stable worker: seconds from the hub listening to the worker ready."""
        times = []
        for name in self.stable:
            readies = [r["ready"] for _, r in self.workers[name].records() if "ready" in r]
            for listening in self.hub_listening:
                after = [t for t in readies if t >= listening]
                if after:
                    times.append(min(after) - listening)
        return times


def _last_stats(worker: Child) -> dict[str, Any]:
    stats = [r["stats"] for _, r in worker.records() if "stats" in r]
    return stats[-1] if stats else {}


def _growth(worker: Child, final: dict[str, Any]) -> list[str]:
    """Threads or memory of a survivor that grew: the end against the first half's peak."""
    stats = [r["stats"] for _, r in worker.records() if "stats" in r]
    if len(stats) < 4 or not final:
        return []
    first_half = stats[: len(stats) // 2]
    problems = []
    peak_threads = max(s["threads"] for s in first_half)
    if final["threads"] > peak_threads + 2:
        problems.append(f"threads grew: peak {peak_threads} in the first half, {final['threads']} at the end")
    peak_rss = max(s["rss"] for s in first_half)
    if final["rss"] > peak_rss * 1.10 + 4 * 1024 * 1024:
        problems.append(f"RSS grew: peak {peak_rss >> 20} MiB in the first half, {final['rss'] >> 20} MiB at the end")
    if final.get("readers") != 1:
        problems.append(f"{final.get('readers')} reader threads at the end (expected 1)")
    return problems


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="role")
    worker = sub.add_parser("worker", help="(internal) one client process")
    worker.add_argument("--kind", choices=["sync", "aio"], required=True)
    worker.add_argument("--name", required=True)
    worker.add_argument("--incarnation", type=int, default=1)
    worker.add_argument("--port", type=int, required=True)
    worker.add_argument("--peers", required=True)
    worker.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--duration", type=float, default=60, help="seconds of chaos (default 60)")
    parser.add_argument("--workers", type=int, default=4, help="client processes; the first two are stable")
    parser.add_argument("--concurrency", type=int, default=6, help="concurrent callers per worker")
    parser.add_argument("--chaos-interval", type=float, default=4.0, help="mean seconds between chaos actions")
    parser.add_argument("--port", type=int, default=0, help="hub port (default: a free one)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the chaos schedule")
    args = parser.parse_args()
    if args.role == "worker":
        run_worker(args)
        return 0
    if args.workers < 2:
        parser.error("--workers must be at least 2")
    with tempfile.TemporaryDirectory(prefix="winerp-soak-") as log_dir:
        code = Soak(args, Path(log_dir)).run()
        if code:
            for path in sorted(Path(log_dir).glob("*.log")):
                text = path.read_text().strip()
                if text:
                    print(f"--- {path.name} (last lines)\n" + "\n".join(text.splitlines()[-15:]))
        return code


if __name__ == "__main__":
    sys.exit(main())
