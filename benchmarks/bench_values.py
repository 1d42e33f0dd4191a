"""What the value codec costs for plain values, before and after values kept their types.

``winerp.protocol.frames.encode_value`` now walks a value before msgspec encodes it (msgspec would
otherwise turn a datetime into a string, a set into an array, a dataclass into a map ...).
This script measures what that walk costs on the values winerp carries most: request
arguments and return values made of dicts, str, int, float, lists, and 64 KiB of bytes.

Method: for each value, the old codec (copied below, the baseline) and the new one encode
it (and decode its bytes) ``--number`` times per sample, the two alternating sample by
sample so that load on the machine hits both alike; ``--repeats`` samples each. It prints
the median time per call and the ratio new / old. Plain values must encode to the same
bytes with both codecs (checked before timing): the wire did not change for them.

    .venv/bin/python benchmarks/bench_values.py
    .venv/bin/python benchmarks/bench_values.py --repeats 101 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, Final

import benchsupport  # noqa: F401  (puts this checkout's winerp first on sys.path)
import msgspec

from winerp.protocol.frames import decode_value, encode_value

# --- BASELINE: the value codec before this change (winerp/protocol/frames.py), copied verbatim ------

_OLD_BIG_INT_EXT: Final = 1
_old_value_encoder: Final = msgspec.msgpack.Encoder()


def _old_decode_ext(code: int, data: memoryview) -> Any:
    if code == _OLD_BIG_INT_EXT:
        return int(bytes(data).decode("ascii"))
    raise ValueError(f"unknown msgpack extension type {code}")


_old_value_decoder: Final = msgspec.msgpack.Decoder(ext_hook=_old_decode_ext)

_OLD_INT64_MIN: Final = -(2**63)
_OLD_UINT64_MAX: Final = 2**64 - 1


def _old_widen(obj: Any) -> Any:
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        if _OLD_INT64_MIN <= obj <= _OLD_UINT64_MAX:
            return obj
        return msgspec.msgpack.Ext(_OLD_BIG_INT_EXT, str(obj).encode("ascii"))
    if isinstance(obj, (list, tuple)):
        return [_old_widen(item) for item in obj]
    if isinstance(obj, dict):
        return {key: _old_widen(value) for key, value in obj.items()}
    return obj


def old_encode_value(value: Any) -> bytes:
    try:
        return _old_value_encoder.encode(value)
    except OverflowError:
        return _old_value_encoder.encode(_old_widen(value))
    except RecursionError:
        raise TypeError("value is nested too deeply to encode") from None


def old_decode_value(data: bytes | msgspec.Raw) -> Any:
    try:
        return _old_value_decoder.decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        from winerp.errors import ProtocolError

        raise ProtocolError(f"undecodable value: {exc}") from None


# --- END OF BASELINE ---------------------------------------------------------------------------

#: name -> (value, calls per sample)
VALUES: Final[dict[str, tuple[Any, int]]] = {
    "args {user_id: 123}": ({"user_id": 123}, 20_000),
    "return 'user-123'": ("user-123", 20_000),
    "dict of 5 (str/int/float/bool/list)": (
        {"name": "alice", "id": 12345, "score": 2.5, "active": True, "tags": ["a", "b", "c"]},
        20_000,
    ),
    "dict, int keys, 20 items": ({i: f"member-{i}" for i in range(20)}, 10_000),
    "nested: list 100 ints + dict 20 + list 50 str": (
        {"ids": list(range(100)), "m": {str(i): i * 1.5 for i in range(20)}, "names": [f"n{i}" for i in range(50)]},
        5_000,
    ),
    "list of 200 dicts of 4": ([{"id": i, "name": "x", "score": i / 3, "ok": True} for i in range(200)], 200),
    "bytes 64 KiB": (b"\x07" * 65536, 5_000),
    "args {data: bytes 64 KiB}": ({"data": b"\x07" * 65536}, 5_000),
    "str 64 KiB": ("x" * 65536, 5_000),
}


def sample(func: Callable[[Any], Any], arg: Any, number: int) -> float:
    """Nanoseconds per call of ``func(arg)``, over ``number`` calls."""
    start = time.perf_counter_ns()
    for _ in range(number):
        func(arg)
    return (time.perf_counter_ns() - start) / number


def compare(
    old: Callable[[Any], Any], new: Callable[[Any], Any], arg: Any, number: int, repeats: int
) -> tuple[float, float]:
    """Median ns per call of ``old`` and ``new``, measured alternately."""
    olds: list[float] = []
    news: list[float] = []
    for index in range(repeats):
        # Alternate which goes first too, so neither always runs on a warmer cache.
        if index % 2:
            news.append(sample(new, arg, number))
            olds.append(sample(old, arg, number))
        else:
            olds.append(sample(old, arg, number))
            news.append(sample(new, arg, number))
    return statistics.median(olds), statistics.median(news)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=41, help="samples per codec and value (default 41)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply the calls per sample (e.g. 0.1 for a smoke run)"
    )
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    options = parser.parse_args()

    rows = []
    print(f"{'value':46} {'op':6} {'old ns':>10} {'new ns':>10} {'new/old':>8}")
    for name, (value, number) in VALUES.items():
        data = encode_value(value)
        if data != old_encode_value(value):
            print(f"{name}: the new codec's bytes differ from the old one's", file=sys.stderr)
            return 1
        calls = max(1, int(number * options.scale))
        for op, old, new, arg in (
            ("encode", old_encode_value, encode_value, value),
            ("decode", old_decode_value, decode_value, data),
        ):
            old_ns, new_ns = compare(old, new, arg, calls, options.repeats)
            ratio = new_ns / old_ns
            rows.append(
                {
                    "value": name,
                    "op": op,
                    "old_ns": round(old_ns, 1),
                    "new_ns": round(new_ns, 1),
                    "ratio": round(ratio, 3),
                }
            )
            print(f"{name:46} {op:6} {old_ns:10.1f} {new_ns:10.1f} {ratio:7.2f}x", flush=True)
    if options.json:
        print(json.dumps({"repeats": options.repeats, "scale": options.scale, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
