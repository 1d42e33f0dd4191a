"""Plumbing shared by the benchmark scripts in this folder.

It finds the shared anchor harness (``benchlib.py``), makes this checkout's ``winerp``
importable ahead of any installed copy, and holds the small helpers the scripts have in
common: reading a process's CPU time and memory from ``/proc``, raising the open-file
limit, a thread-safe inform counter, and a description of the code under test.

The harness is looked up in this order: a ``benchlib`` already importable (``run_all.sh``
puts its folder on ``PYTHONPATH``), the folder named by ``WINERP_BENCH_HARNESS``, then
``../shared/bench`` next to the repository root.
"""

from __future__ import annotations

import importlib
import os
import platform
import re
import resource
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
HARNESS_ENV = "WINERP_BENCH_HARNESS"
#: Set (to anything) to run the hub with ``--dashboard``.
DASHBOARD_ENV = "WINERP_BENCH_DASHBOARD"
DEFAULT_HARNESS = REPO_ROOT.parent / "shared" / "bench"

# This checkout's winerp, not whatever else is installed: the benchmarks measure the tree they
# live in.  Children re-run the same script, so they do the same.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(1, str(REPO_ROOT))


def spawn_hub(benchlib: ModuleType, timeout: float) -> tuple[Any, int]:
    """Start the hub the way a user runs it, ``python -m winerp hub``; return (child, port).

    The hub process then holds the hub and nothing of the benchmark (no harness, no
    client code), so its peak RSS is the daemon's own.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "winerp", "hub", "--host", benchlib.HOST, "--port", "0"]
    if os.environ.get(DASHBOARD_ENV):
        # The same hub with its dashboard on (nothing polls it): what serving it costs routing.
        argv.append("--dashboard")
    child = benchlib.Child("hub", argv, env=env, place="hub")
    line = child.wait_line("winerp hub", timeout)
    found = re.search(r":(\d+) ", line)
    if found is None:
        raise RuntimeError(f"cannot read the hub's port from {line!r}")
    return child, int(found.group(1))


def harness_dir() -> Path:
    """Return the folder of the shared anchor harness (it may not exist)."""
    env = os.environ.get(HARNESS_ENV)
    return Path(env).expanduser().resolve() if env else DEFAULT_HARNESS


def load_benchlib() -> ModuleType:
    """Import ``benchlib`` from the shared harness, or exit with a clear message."""
    try:
        return importlib.import_module("benchlib")
    except ImportError:
        pass
    where = harness_dir()
    if (where / "benchlib.py").is_file():
        sys.path.insert(0, str(where))
        # Children are started with the same environment: let them find it the same way.
        os.environ[HARNESS_ENV] = str(where)
        return importlib.import_module("benchlib")
    sys.exit(
        f"benchlib.py not found in {where} (nor on PYTHONPATH). Point {HARNESS_ENV} at the folder of "
        "the shared anchor harness (the one with benchlib.py and run_all.sh)."
    )


def load_winerp() -> ModuleType:
    """Import this checkout's ``winerp``; exit clearly if it is missing or is winerp 1.x."""
    try:
        winerp = importlib.import_module("winerp")
        sync = importlib.import_module("winerp.sync")
    except ImportError as exc:
        sys.exit(f"cannot import winerp.sync from this checkout: {exc}")
    if not hasattr(winerp, "Hub") or not hasattr(sync, "Client"):
        sys.exit("this checkout's winerp has no Hub or sync.Client yet")
    try:
        importlib.import_module("winerp.aio")  # so that winerp.aio.Client resolves
    except ImportError:
        pass  # the aio variant then fails alone, with its reason in the notes
    version = str(getattr(winerp, "__version__", "?"))
    if version.startswith("1."):
        sys.exit(f"imported winerp {version} (1.x) instead of this checkout's: run with the project venv")
    return winerp


def winerp_description() -> str:
    """Describe the code under test: winerp version, git revision, key dependencies."""
    try:
        import winerp

        parts = [f"winerp {getattr(winerp, '__version__', '?')}"]
    except ImportError:
        parts = ["winerp ?"]
    rev = git_revision()
    if rev:
        parts[0] += f" ({rev})"
    from importlib import metadata

    for dist in ("msgspec", "websocket-client"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} ?")
    parts.append(f"CPython {platform.python_version()}")
    return ", ".join(parts)


def git_revision() -> str:
    """Return the short commit of this checkout, with ``+dirty`` when winerp/ has changes."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "winerp"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    if not rev:
        return "uncommitted" if dirty else ""
    return rev + ("+dirty" if dirty else "")


# --- /proc readings ---------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float | None:
    """Return the user+system CPU seconds used so far by process ``pid`` (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may contain spaces; the fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def machine_busy_cpu_s() -> float | None:
    """Return the CPU seconds the whole machine has spent busy (user, nice, system) since boot."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (vals[0] + vals[1] + vals[2]) / _CLK_TCK


def proc_mem_mb(pid: int) -> dict[str, float]:
    """Return ``{"rss": VmRSS, "hwm": VmHWM, "threads": n}`` of process ``pid`` (MB)."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss"] = round(int(line.split()[1]) / 1024.0, 1)
                elif line.startswith("VmHWM:"):
                    out["hwm"] = round(int(line.split()[1]) / 1024.0, 1)
                elif line.startswith("Threads:"):
                    out["threads"] = int(line.split()[1])
    except OSError:
        pass
    return out


def raise_nofile() -> int:
    """Raise this process's soft limit on open files to the hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 16)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def machine_description() -> dict[str, Any]:
    """Return what the figures depend on: CPU count and model, kernel, Python."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


# --- inform counting ----------------------------------------------------------------------------


def make_counter(benchlib: ModuleType) -> Any:
    """Return a thread-safe ``benchlib.InformCounter`` that tolerates out-of-order delivery.

    Information handlers may run on several worker threads at once, so the end marker can be
    handled before the last few messages: the report then waits until the count reaches the
    number the sender announced (or the idle timeout fires, if some were lost).
    """

    class SafeInformCounter(benchlib.InformCounter):
        def __init__(self) -> None:
            super().__init__()
            self._lock = threading.Lock()

        def hit(self) -> None:
            with self._lock:
                super().hit()
                if self.expected is not None and self.count >= self.expected:
                    self.report("end-marker")

        def end(self, expected: int | None = None) -> None:
            with self._lock:
                self.expected = expected
                if expected is None or self.count >= expected:
                    self.report("end-marker")

        def idle_check(self) -> None:
            with self._lock:
                super().idle_check()

        def idle_thread(self) -> None:
            """Start a daemon thread that reports after the idle timeout (sync roles)."""

            def run() -> None:
                ev = threading.Event()
                while not ev.wait(0.25):
                    self.idle_check()

            threading.Thread(target=run, name="bench-inform-idle", daemon=True).start()

    return SafeInformCounter()
