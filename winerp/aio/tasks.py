"""Handler tasks started eagerly: a handler's first step runs at once, before any loop turn.

Why: a task on asyncio costs more than its coroutine's own work before it runs a line (the
task, two loop callbacks and a turn of the loop), and most inform and route handlers end
without ever waiting on anything. Run eagerly, such a handler needs no loop turn; one that
does wait goes on as a task from where it stopped. It is a task from its first line either
way: ``asyncio.current_task()``, ``asyncio.timeout()``, cancellation and context variables
behave as in any task. ``benchmarks/bench_tasks.py`` measures both kinds of handler; on
3.11, one that ends at once costs about 0.4x of an ordinary task, one that waits about
1.3x (the pure-Python task below steps slower than asyncio's compiled one), a few µs
either way beside what a handler that waits on I/O waits.

Python 3.12 has this built in (``asyncio.Task(..., eager_start=True)``). Before 3.12 the
same is done with asyncio's pure-Python task class, whose constructor is repeated here
minus its last step (scheduling the first step on the loop); that class and its fields
are fixed in those released versions (3.9 to 3.11), the only ones that take this path.
`tests/aio/test_handler_tasks.py` holds both paths to the same behaviour.

A task can only start eagerly where no other task is running (a loop callback, such as
the one that reads the connection), and only on a loop without a task factory of its own;
elsewhere it is created the ordinary way.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import Coroutine
from typing import Any

__all__ = ["start_task"]

Task = asyncio.Task[None]


def start_task(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None]) -> Task | None:
    """Run ``coroutine`` as a task of ``loop`` (on its thread), its first step at once if possible.

    Returns the task while it still runs, or None when it already ended (nothing to track).
    """
    if _current_task(loop) is not None or loop.get_task_factory() is not None:
        # Inside another task no task can start eagerly; a loop with a task factory of its
        # own (tracing, context propagation) gets its tasks made by that factory.
        return loop.create_task(coroutine)
    return _eager(loop, coroutine)


if sys.version_info >= (3, 12):
    _current_task = asyncio.current_task

    def _eager(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None]) -> Task | None:
        task = asyncio.Task(coroutine, loop=loop, eager_start=True)
        return None if task.done() else task

else:
    from asyncio import futures, tasks

    # asyncio.current_task(loop) without its Python call (it is one before 3.12).
    _current_task = tasks._current_tasks.get  # type: ignore[attr-defined]
    _PENDING = futures._PENDING  # type: ignore[attr-defined]

    class _EagerTask(tasks._PyTask):  # type: ignore[name-defined,misc]
        """asyncio's pure-Python task, created without scheduling its first step."""

        # The name is made when asked for (most handlers end before anyone asks).
        _name = property(
            lambda self: self.__dict__.get("_name") or f"winerp-handler-{id(self):x}",
            lambda self, name: self.__dict__.__setitem__("_name", name),
        )

        def __init__(self, coroutine: Coroutine[Any, Any, None], loop: asyncio.AbstractEventLoop) -> None:
            # What tasks._PyTask.__init__ does on 3.11, except `loop.call_soon(self.__step)`.
            futures._PyFuture.__init__(self, loop=loop)  # type: ignore[attr-defined]
            self._num_cancels_requested = 0
            self._must_cancel = False
            self._fut_waiter = None
            self._coro = coroutine
            self._context = contextvars.copy_context()

    def _eager(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None]) -> Task | None:
        task = _EagerTask(coroutine, loop)
        # The first step, now, in the task's own context (as the loop would run it); the
        # step itself makes the task the current one.
        task._context.run(task._Task__step)
        if task._state != _PENDING:  # what task.done() says, without its call
            return None
        # Known to asyncio.all_tasks() (and so cancelled by asyncio.run at its end) only
        # once it lives on; an ended one is gone anyway.
        tasks._register_task(task)
        result: Task = task
        return result
