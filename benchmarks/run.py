#!/usr/bin/env python3
"""Run winerp (this checkout) and its baselines side by side, several times; report medians.

One repetition runs, one after the other, each system's harness script once:

  winerp-2 sync, winerp-2 aio   ``bench_winerp.py`` with this interpreter (the project venv)
  winerp-1.5.0 (hub)            the harness's ``bench_winerp_legacy.py`` with the interpreter
                                of the legacy virtualenv (winerp 1.5.0 + websockets 13.1 from
                                PyPI, built by ``tests/legacy_env.py``), or of the anchors' venv
  nats (server)                 the harness's ``bench_nats.py`` with the anchors' venv, when it
                                exists (``bash <harness>/setup.sh``); the floors name NATS too

The order of the systems rotates from one repetition to the next, so a slow drift of the
machine does not always hit the same system. After ``--reps`` repetitions (default 3) it
prints a table of the medians with the ratios to winerp 1.5.0 (and to NATS), checks the
floors of issue 8, and writes everything, every raw line included, as JSON to
``benchmarks/results/`` (git-ignored).

Usage: ``python benchmarks/run.py [--reps N] [--quick] [--systems sync,aio,legacy,nats]``.
Counts and times: the harness's ``BENCH_*`` environment variables (``BENCH_QUICK=1`` ...).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchsupport as bs

RESULTS_DIR = bs.BENCH_DIR / "results"
LEGACY_ENV = bs.REPO_ROOT / "tests" / "legacy_env.py"
ANCHORS_VENV = Path(os.environ.get("VENV", Path.home() / ".cache" / "winerp-anchors-venv"))

OURS_SYNC = "winerp-2 sync"
OURS_AIO = "winerp-2 aio"
LEGACY = "winerp-1.5.0 (hub)"
NATS = "nats (server)"
ROW_ORDER = [OURS_SYNC, OURS_AIO, LEGACY, NATS]

# metric key -> (column title, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "rtt_p50": ("RTT small p50 µs", False),
    "rtt_p90": ("p90 µs", False),
    "rtt_p99": ("p99 µs", False),
    "rtt_64k_p50": ("RTT 64 KiB p50 µs", False),
    "req_per_s": ("req/s @64 in flight", True),
    "inform_per_s": ("inform msg/s", True),
    "hub_rss_mb": ("hub peak RSS MB", False),
}

# The floors of issue 8: (metric, ours, baseline, bound, "<=" or ">=").
FLOORS: list[tuple[str, str, str, float, str]] = [
    (metric, ours, base, bound, op)
    for ours in (OURS_SYNC, OURS_AIO)
    for metric, base, bound, op in (
        ("rtt_p50", LEGACY, 0.6, "<="),
        ("rtt_p50", NATS, 0.9, "<="),
        ("rtt_64k_p50", LEGACY, 0.15, "<="),
        ("rtt_64k_p50", NATS, 1.5, "<="),
        ("req_per_s", LEGACY, 2.0, ">="),
        ("inform_per_s", LEGACY, 1.5, ">="),
        ("hub_rss_mb", LEGACY, 1.0, "<="),
    )
] + [("rtt_p50", OURS_SYNC, OURS_AIO, 1.2, "<=")]


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


# --- finding the interpreters ------------------------------------------------------------------


def legacy_python() -> tuple[str | None, str]:
    """Return (interpreter with winerp 1.5.0, where it came from)."""
    if LEGACY_ENV.is_file():
        spec = importlib.util.spec_from_file_location("legacy_env", LEGACY_ENV)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        try:
            return str(mod.legacy_python()), "tests/legacy_env.py"
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:  # fall back to the anchors' venv
            log(f"tests/legacy_env.py could not provide winerp 1.5.0: {type(exc).__name__}: {exc}")
    py = ANCHORS_VENV / "bin" / "python"
    if py.exists():
        return str(py), "anchors venv"
    return None, "none found: add tests/legacy_env.py or run the harness's setup.sh"


def anchors_python() -> str | None:
    py = ANCHORS_VENV / "bin" / "python"
    return str(py) if py.exists() else None


# --- running one script ------------------------------------------------------------------------


def run_script(python: str, script: Path, args: list[str], timeout: float) -> tuple[list[dict[str, Any]], str]:
    """Run a harness-style script; return its JSON lines and, on failure, its stderr tail."""
    # Only the harness on the path: the winerp 1.5.0 interpreter must never see this checkout.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    harness = str(bs.harness_dir())
    env["PYTHONPATH"] = harness
    try:
        proc = subprocess.run(
            [python, str(script), *args],
            cwd=harness,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        rc = -1
        err += f"\n(timed out after {timeout:.0f}s)"
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    problem = "" if rc == 0 and lines else f"rc={rc}: " + err[-1500:]
    return lines, problem


# --- statistics --------------------------------------------------------------------------------


def flatten(line: dict[str, Any]) -> dict[str, float | None]:
    rtt = line.get("rtt_small_us") or {}
    return {
        "rtt_p50": rtt.get("p50"),
        "rtt_p90": rtt.get("p90"),
        "rtt_p99": rtt.get("p99"),
        "rtt_64k_p50": line.get("rtt_64k_us_p50"),
        "req_per_s": line.get("req_per_s_64_inflight"),
        "inform_per_s": line.get("inform_msgs_per_s"),
        "hub_rss_mb": line.get("hub_rss_mb"),
    }


def interference(line: dict[str, Any]) -> float | None:
    """The share of the machine other processes used during that script (from its notes)."""
    m = re.search(r"\((\d+)% of the machine\)", line.get("notes") or "")
    return float(m.group(1)) if m else None


def medians(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    for system in {r["system"] for r in runs}:
        rows = [flatten(r["line"]) for r in runs if r["system"] == system]
        out[system] = {}
        for key in METRICS:
            vals = [v for v in (row[key] for row in rows) if v is not None]
            out[system][key] = round(statistics.median(vals), 1) if vals else None
        out[system]["n"] = len(rows)
    return out


def spread(runs: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Every run's value of each metric, per system, sorted: the noise behind each median."""
    out: dict[str, dict[str, list[float]]] = {}
    for system in sorted({r["system"] for r in runs}):
        rows = [flatten(r["line"]) for r in runs if r["system"] == system]
        out[system] = {key: sorted(v for v in (row[key] for row in rows) if v is not None) for key in METRICS}
    return out


def spread_text(spr: dict[str, dict[str, list[float]]]) -> str:
    lines = ["every run, sorted (RTT p50 µs | req/s | inform/s):"]
    for system in [s for s in ROW_ORDER if s in spr] + sorted(s for s in spr if s not in ROW_ORDER):
        parts = [
            " ".join(f"{v:,.0f}" for v in spr[system][key]) or "-" for key in ("rtt_p50", "req_per_s", "inform_per_s")
        ]
        lines.append(f"  {system}: " + " | ".join(parts))
    return "\n".join(lines)


def ratio(med: dict[str, dict[str, float | None]], metric: str, a: str, b: str) -> float | None:
    x = med.get(a, {}).get(metric)
    y = med.get(b, {}).get(metric)
    if x is None or not y:
        return None
    return round(x / y, 3)


def check_floors(med: dict[str, dict[str, float | None]]) -> list[dict[str, Any]]:
    out = []
    for metric, ours, base, bound, op in FLOORS:
        r = ratio(med, metric, ours, base)
        ok = None if r is None else (r <= bound if op == "<=" else r >= bound)
        out.append(
            {
                "metric": metric,
                "system": ours,
                "baseline": base,
                "bound": f"{op} {bound}x",
                "ratio": r,
                "ok": ok,
            }
        )
    return out


# --- report ------------------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def table(med: dict[str, dict[str, float | None]]) -> str:
    systems = [s for s in ROW_ORDER if s in med] + sorted(s for s in med if s not in ROW_ORDER)
    head = "| system | runs | " + " | ".join(t for t, _ in METRICS.values()) + " |"
    rows = [head, "|---|---:|" + "---:|" * len(METRICS)]
    for s in systems:
        cells = [fmt(med[s].get(k), 1 if k == "hub_rss_mb" else 0) for k in METRICS]
        rows.append(f"| {s} | {fmt(med[s]['n'])} | " + " | ".join(cells) + " |")
    for base in (LEGACY, NATS):
        if base not in med:
            continue
        for s in (OURS_SYNC, OURS_AIO):
            if s not in med:
                continue
            cells = [fmt(ratio(med, k, s, base), 2) for k in METRICS]
            short = "1.5.0" if base == LEGACY else "NATS"
            rows.append(f"| {s} ÷ {short} | | " + " | ".join(c + ("x" if c != "-" else "") for c in cells) + " |")
    return "\n".join(rows)


def floors_text(floors: list[dict[str, Any]]) -> str:
    rows = ["| floor | ratio | verdict |", "|---|---:|---|"]
    for f in floors:
        short = {LEGACY: "1.5.0", NATS: "NATS"}.get(f["baseline"], f["baseline"])
        verdict = {True: "pass", False: "**FAIL**", None: "n/a"}[f["ok"]]
        r = "-" if f["ratio"] is None else f"{f['ratio']:.2f}x"
        rows.append(f"| {f['system']} {f['metric']} {f['bound']} {short} | {r} | {verdict} |")
    return "\n".join(rows)


# --- main --------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="repetitions of every system (default 3, at least 2)")
    ap.add_argument("--quick", action="store_true", help="smoke run: BENCH_QUICK=1 (small counts)")
    ap.add_argument(
        "--systems",
        default="sync,aio,legacy,nats",
        help="comma-separated subset of sync,aio,legacy,nats (default: all; nats only if available)",
    )
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per script run (default 240)")
    ap.add_argument("--out", type=Path, default=None, help="JSON output file (default benchmarks/results/...)")
    args = ap.parse_args()
    if args.quick:
        os.environ["BENCH_QUICK"] = "1"
    if args.reps < 2:
        log("note: one repetition gives no median; the method asks for at least two")
    wanted = {s.strip() for s in args.systems.split(",") if s.strip()}
    harness = bs.harness_dir()
    if not (harness / "benchlib.py").is_file():
        log(f"no benchlib.py in {harness}: set {bs.HARNESS_ENV} to the shared harness folder")
        return 2

    # (label, python, script, args)
    jobs: list[tuple[str, str, Path, list[str]]] = []
    ours = [v for v in ("sync", "aio") if v in wanted]
    for v in ours:
        jobs.append((v, sys.executable, bs.BENCH_DIR / "bench_winerp.py", ["--variant", v]))
    if "legacy" in wanted:
        py, origin = legacy_python()
        log(f"winerp 1.5.0 interpreter: {origin}")
        if py is None:
            log("cannot run the winerp 1.5.0 baseline: " + origin)
            return 2
        jobs.append(("legacy", py, harness / "bench_winerp_legacy.py", []))
    if "nats" in wanted:
        py = anchors_python()
        if py is None:
            log(f"no anchors venv at {ANCHORS_VENV}: NATS skipped (run the harness's setup.sh)")
        else:
            jobs.append(("nats", py, harness / "bench_nats.py", []))

    started = time.gmtime()
    runs: list[dict[str, Any]] = []
    problems: list[dict[str, Any]] = []
    for rep in range(args.reps):
        k = rep % len(jobs)
        for label, py, script, sargs in jobs[k:] + jobs[:k]:
            t0 = time.monotonic()
            lines, problem = run_script(py, script, sargs, args.timeout)
            log(f"rep {rep + 1}/{args.reps} {label}: {time.monotonic() - t0:.0f}s" + (" FAILED" if problem else ""))
            if problem:
                log(problem)
                problems.append({"rep": rep, "job": label, "problem": problem})
            for line in lines:
                runs.append({"rep": rep, "system": line["system"], "line": line})
                busy = interference(line)
                if busy is not None and busy > 10:
                    log(f"  note: other processes used {busy:.0f}% of the machine during {line['system']}")

    med = medians(runs)
    floors = check_floors(med)
    report = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", started),
        "machine": bs.machine_description(),
        "winerp": bs.winerp_description(),
        "config": {
            "reps": args.reps,
            "quick": os.environ.get("BENCH_QUICK") == "1",
            "pin": os.environ.get("BENCH_PIN", "none"),
            "knobs": {k: v for k, v in os.environ.items() if k.startswith("BENCH_")},
        },
        "medians": med,
        "ratios": {
            f"{s} / {b}": {k: ratio(med, k, s, b) for k in METRICS}
            for s in (OURS_SYNC, OURS_AIO)
            for b in (LEGACY, NATS)
            if s in med and b in med
        },
        "floors": floors,
        "spread": spread(runs),
        "interference_pct": {s: [interference(r["line"]) for r in runs if r["system"] == s] for s in sorted(med)},
        "problems": problems,
        "runs": runs,
    }
    out = args.out
    if out is None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        out = RESULTS_DIR / f"run-{time.strftime('%Y%m%dT%H%M%SZ', started)}.json"
    out.write_text(json.dumps(report, indent=1) + "\n")

    print(f"medians of {args.reps} runs per system; {report['winerp']}")
    print()
    print(table(med))
    print()
    print(spread_text(report["spread"]))
    print()
    print(floors_text(floors))
    print()
    print(f"JSON: {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
