#!/usr/bin/env python3
"""A coroutine handler started as an ordinary task against one started eagerly (`winerp.aio.tasks`).

Method: on one asyncio event loop, from a loop callback (where the aio client's reader
runs), start ``--number`` handlers that end without waiting (what most inform and route
handlers do), each way in turn, ``--repeats`` samples each, alternating sample by sample so
that load on the machine hits both alike; then the same with handlers that wait once (an
``asyncio.sleep(0)``). Prints the median cost per handler, in µs, until every handler has
ended, and the ratio eager / ordinary. Nothing is asserted.

    .venv/bin/python benchmarks/bench_tasks.py [--number 20000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from winerp.aio.tasks import start_task

Starter = Callable[[asyncio.AbstractEventLoop, Coroutine[Any, Any, None]], object]


async def _ends_at_once(value: int) -> None:
    return None


async def _waits_once(value: int) -> None:
    await asyncio.sleep(0)


def _ordinary(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None]) -> object:
    # What the client did before: a task, kept in a set until done (so close() can cancel it).
    task = loop.create_task(coroutine)
    _KEPT.add(task)
    task.add_done_callback(_KEPT.discard)
    return task


def _eager(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None]) -> object:
    task = start_task(loop, coroutine)
    if task is not None:
        _KEPT.add(task)
        task.add_done_callback(_KEPT.discard)
    return task


_KEPT: set[asyncio.Task[None]] = set()


async def _sample(start: Starter, handler: Callable[[int], Coroutine[Any, Any, None]], number: int) -> float:
    """µs per handler, from the first start until every handler has ended."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def callback() -> None:
        for value in range(number):
            start(loop, handler(value))
        done.set_result(None)

    began = time.perf_counter()
    loop.call_soon(callback)
    await done
    while _KEPT:
        await asyncio.sleep(0)
    return (time.perf_counter() - began) / number * 1e6


async def _main(number: int, repeats: int) -> None:
    print(f"µs per handler, median of {repeats} alternating samples of {number} handlers")
    print(f"{'handler':22} {'ordinary task':>14} {'eager':>8} {'ratio':>7}")
    for label, handler in (("ends at once", _ends_at_once), ("waits once", _waits_once)):
        samples: dict[str, list[float]] = {"ordinary": [], "eager": []}
        for _ in range(repeats):
            samples["ordinary"].append(await _sample(_ordinary, handler, number))
            samples["eager"].append(await _sample(_eager, handler, number))
        ordinary = statistics.median(samples["ordinary"])
        eager = statistics.median(samples["eager"])
        print(f"{label:22} {ordinary:>14.2f} {eager:>8.2f} {eager / ordinary:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20000, help="handlers per sample (default: 20000)")
    parser.add_argument("--repeats", type=int, default=7, help="samples of each way (default: 7)")
    args = parser.parse_args()
    asyncio.run(_main(args.number, args.repeats))


if __name__ == "__main__":
    main()
