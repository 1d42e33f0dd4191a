"""Masking cost: the old ways of `winerp.wire.websocket` against the new, per payload size.

Masking (client to hub) and unmasking (at the hub) are the same XOR with a 4-byte key.
Before, a winerp client picked keys of four equal bytes (one random byte, four times), so
masking was one ``bytes.translate``; keys of four different bytes (websocket-client's, and
now every winerp key, as RFC 6455 section 5.3 requires) took a big-int XOR. Now keys are
32 random bits, and `unmask` XORs small payloads as one big int and, from 16 KiB on, as one
big int per 8 KiB chunk. The script times, per size:

- ``old random key``: the old big-int path with a key of four different bytes;
- ``old equal-byte key``: the old translate path (what the old, predictable keys cost);
- ``new random key``: `winerp.wire.websocket.unmask` with a key of four different bytes (compiled,
  from the ``websockets`` C extension, when it is installed);
- ``new pure Python``: `winerp.wire.websocket.python_unmask`, the path taken without it;
- ``new client_frame``: a whole masked frame, key drawn from the batched urandom pool.

The variants run alternately within each repeat, and the table gives medians over the
repeats, in microseconds per call, and the ratio new / old (random keys). Nothing is asserted.

    .venv/bin/python benchmarks/bench_mask.py [--repeats 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from winerp.wire.websocket import OP_BINARY, client_frame, python_unmask, unmask

SIZES = [16, 1024, 64 * 1024, 1024 * 1024]
KEY = b"\x12\x9a\x5c\xe7"
_TABLES = {byte: bytes(value ^ byte for value in range(256)) for byte in range(256)}


def old_unmask(payload: bytes, key: bytes) -> bytes:
    """The masking of winerp before this change (kept here as the baseline)."""
    if key[0] == key[1] == key[2] == key[3]:
        return payload.translate(_TABLES[key[0]]) if key[0] else payload
    size = len(payload)
    whole, rest = divmod(size, 4)
    stream = int.from_bytes(key * whole + key[:rest], "little")
    return (int.from_bytes(payload, "little") ^ stream).to_bytes(size, "little")


def _per_call(function: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - started) / calls * 1e6


def measure(size: int, repeats: int) -> dict[str, float]:
    payload = os.urandom(size)
    assert old_unmask(payload, KEY) == unmask(payload, KEY)
    variants: dict[str, Callable[[], object]] = {
        "old random key": lambda: old_unmask(payload, KEY),
        "old equal-byte key": lambda: old_unmask(payload, b"\x5c\x5c\x5c\x5c"),
        "new random key": lambda: unmask(payload, KEY),
        "new pure Python": lambda: python_unmask(payload, KEY),
        "new client_frame": lambda: client_frame(OP_BINARY, payload),
    }
    calls = max(3, min(20_000, 4_000_000 // max(size, 64)))
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, function in variants.items():  # alternately, so drift hits every variant alike
            samples[name].append(_per_call(function, calls))
    return {name: statistics.median(values) for name, values in samples.items()}


def _label(size: int) -> str:
    return (
        f"{size // (1024 * 1024)} MiB"
        if size >= 1024 * 1024
        else f"{size // 1024} KiB"
        if size >= 1024
        else f"{size} B"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, help="also write the medians here")
    args = parser.parse_args()
    results = {_label(size): measure(size, args.repeats) for size in SIZES}
    names = list(next(iter(results.values())))
    print(f"median µs per call over {args.repeats} alternating repeats (Python {sys.version.split()[0]})")
    print(f"{'size':>8} " + " ".join(f"{name:>19}" for name in names) + f" {'new/old random':>15}")
    for label, medians in results.items():
        ratio = medians["new random key"] / medians["old random key"]
        print(f"{label:>8} " + " ".join(f"{medians[name]:>19.2f}" for name in names) + f" {ratio:>15.2f}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
