#!/usr/bin/env python3
"""Before and after: `bench_winerp.py` of two checkouts, run alternately, medians and ratios.

A change on a hot path is judged by this: both checkouts' own ``benchmarks/bench_winerp.py``
run in turn, A B A B ..., each with its own Python (a virtualenv where that checkout is
installed), so drift in the machine's speed hits both alike. For each variant (sync, aio)
and metric it prints the median of each side and the ratio after / before.

    python benchmarks/compare.py --before ../old-checkout --before-python ../old-checkout/.venv/bin/python \\
        [--after .] [--after-python .venv/bin/python] [--rounds 4] [--variants sync,aio] [--json out.json]

One checkout against itself under two settings (e.g. the hub's dashboard off and on):

    python benchmarks/compare.py --before . --before-python .venv/bin/python \\
        --after-env WINERP_BENCH_DASHBOARD=1

Run nothing else on the machine meanwhile. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

METRICS = {
    "small RTT p50 (µs)": lambda r: r["rtt_small_us"]["p50"],
    "64 KiB RTT p50 (µs)": lambda r: r["rtt_64k_us_p50"],
    "req/s, 64 in flight": lambda r: r["req_per_s_64_inflight"],
    "informs/s": lambda r: r["inform_msgs_per_s"],
    "hub RSS (MB)": lambda r: r["hub_rss_mb"],
}


def run_once(checkout: Path, python: str, variant: str, env: dict[str, str]) -> dict[str, Any]:
    """One run of a checkout's bench_winerp.py, with ``env`` added to the environment; its JSON line."""
    script = checkout / "benchmarks" / "bench_winerp.py"
    done = subprocess.run(
        [python, str(script), "--variant", variant],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    line = [text for text in done.stdout.splitlines() if text.startswith("{")][-1]
    result: dict[str, Any] = json.loads(line)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the checkout to compare against")
    parser.add_argument("--before-python", required=True, help="a Python where --before is installed")
    parser.add_argument("--after", type=Path, default=Path("."), help="the checkout measured (default: .)")
    parser.add_argument("--after-python", default=sys.executable, help="a Python where --after is installed")
    parser.add_argument("--rounds", type=int, default=4, help="runs of each side per variant (default: 4)")
    parser.add_argument("--variants", default="sync,aio", help="comma-separated (default: sync,aio)")
    parser.add_argument("--json", type=Path, help="also write every run here")
    for side in ("before", "after"):
        parser.add_argument(
            f"--{side}-env",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"an environment variable for the {side} side's runs (repeatable)",
        )
    args = parser.parse_args()
    sides = {
        "before": (args.before, args.before_python, _environment(args.before_env)),
        "after": (args.after, args.after_python, _environment(args.after_env)),
    }
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for variant in args.variants.split(","):
        runs[variant] = {"before": [], "after": []}
        for round_number in range(args.rounds):
            for side, (checkout, python, env) in sides.items():
                runs[variant][side].append(run_once(checkout.resolve(), python, variant, env))
                print(f"  {variant} round {round_number + 1} {side} done", file=sys.stderr)
    print(f"medians of {args.rounds} alternating runs per side; ratio = after / before")
    print(f"{'variant':8} {'metric':24} {'before':>10} {'after':>10} {'ratio':>7}")
    for variant, sides_runs in runs.items():
        for metric, pick in METRICS.items():
            before = statistics.median(pick(r) for r in sides_runs["before"])
            after = statistics.median(pick(r) for r in sides_runs["after"])
            print(f"{variant:8} {metric:24} {before:>10.1f} {after:>10.1f} {after / before:>7.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(runs, indent=1) + "\n")


def _environment(pairs: list[str]) -> dict[str, str]:
    """``["A=1", "B=2"]`` as a mapping."""
    return dict(pair.split("=", 1) for pair in pairs)


if __name__ == "__main__":
    main()
