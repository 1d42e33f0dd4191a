"""Coroutine handlers start eagerly (`winerp.aio.tasks`) and are still tasks in every way.

Asyncio only (the sync client has no tasks). Through a real hub: what a handler sees of
`asyncio.current_task()`, `asyncio.timeout()`, context variables, cancellation at
`close()`, and a handler that waits on the loop before it answers; and `start_task` alone,
from a loop callback (eager) and from inside a task (an ordinary task).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from winerp.aio.tasks import start_task

try:
    from aio.test_client import Clients, Recorder, aio, clients
except ImportError:  # tests/ is a package
    from tests.aio.test_client import Clients, Recorder, aio, clients  # noqa: F401 - a fixture

pytestmark = pytest.mark.timeout(60)

SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")


@aio
async def test_each_inform_handler_runs_in_a_task_of_its_own(clients: Clients) -> None:
    receiver = await clients("receiver")
    sender = await clients("sender")
    recorder = Recorder()

    @receiver.event
    async def on_winerp_information(data: Any, source: str) -> None:
        recorder.add(asyncio.current_task())

    for number in range(5):
        await sender.inform(number, "receiver")
    tasks = await recorder.wait(5)
    assert all(task is not None for task in tasks)
    assert len({id(task) for task in tasks}) == 5


@aio
async def test_a_context_variable_set_by_one_handler_is_not_seen_by_the_next(clients: Clients) -> None:
    receiver = await clients("receiver")
    sender = await clients("sender")
    recorder = Recorder()

    @receiver.event
    async def on_winerp_information(data: Any, source: str) -> None:
        recorder.add(SEEN.get())
        SEEN.set(f"set by {data}")

    for number in range(3):
        await sender.inform(number, "receiver")
    assert await recorder.wait(3) == ["unset", "unset", "unset"]
    assert SEEN.get() == "unset"


@pytest.mark.skipif(not hasattr(asyncio, "timeout"), reason="asyncio.timeout is new in Python 3.11")
@aio
async def test_asyncio_timeout_in_a_handler_fires(clients: Clients) -> None:
    receiver = await clients("receiver")
    sender = await clients("sender")
    recorder = Recorder()

    @receiver.event
    async def on_winerp_information(data: Any, source: str) -> None:
        try:
            async with asyncio.timeout(0.05):
                await asyncio.sleep(30)
        except TimeoutError:
            recorder.add("timed out")

    await sender.inform("x", "receiver")
    assert await recorder.wait(1) == ["timed out"]


@aio
async def test_a_route_that_waits_on_the_loop_answers_after_it(clients: Clients) -> None:
    server = await clients("server")
    caller = await clients("caller")

    @server.route
    async def slow_double(source: str, value: int) -> int:
        await asyncio.sleep(0.05)
        await asyncio.sleep(0)
        return value * 2

    @server.route
    async def double(source: str, value: int) -> int:
        return value * 2

    answers = await asyncio.gather(
        *(caller.request("slow_double", "server", value=n) for n in range(10)),
        *(caller.request("double", "server", value=n) for n in range(10)),
    )
    assert answers == [n * 2 for n in range(10)] * 2


@aio
async def test_close_cancels_a_handler_still_waiting(clients: Clients) -> None:
    receiver = await clients("receiver")
    sender = await clients("sender")
    waiting = asyncio.Event()
    recorder = Recorder()

    @receiver.event
    async def on_winerp_information(data: Any, source: str) -> None:
        waiting.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            recorder.add("cancelled")
            raise

    await sender.inform("x", "receiver")
    await asyncio.wait_for(waiting.wait(), 5)
    await receiver.close()
    assert await recorder.wait(1) == ["cancelled"]


@aio
async def test_a_handler_that_raises_at_once_is_logged_and_the_next_runs(
    clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = await clients("receiver")
    sender = await clients("sender")
    recorder = Recorder()

    @receiver.event
    async def on_winerp_information(data: Any, source: str) -> None:
        if data == "bad":
            raise ValueError("handler bug")
        recorder.add(data)

    await sender.inform("bad", "receiver")
    await sender.inform("good", "receiver")
    assert await recorder.wait(1) == ["good"]
    assert "handler bug" in caplog.text


def test_start_task_runs_the_first_step_at_once_from_a_loop_callback() -> None:
    steps: list[str] = []

    async def handler(gate: asyncio.Event) -> None:
        steps.append("first step")
        await gate.wait()
        steps.append("after waiting")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Event()
        started: list[asyncio.Task[None] | None] = []

        def callback() -> None:
            started.append(start_task(loop, handler(gate)))
            steps.append("start_task returned")

        loop.call_soon(callback)
        await asyncio.sleep(0.01)
        assert steps == ["first step", "start_task returned"]
        task = started[0]
        assert task is not None and not task.done() and task in asyncio.all_tasks()
        gate.set()
        await task
        assert steps[-1] == "after waiting"

        ended: list[asyncio.Task[None] | None] = []
        loop.call_soon(lambda: ended.append(start_task(loop, _noop())))
        await asyncio.sleep(0.01)
        assert ended == [None]  # it ended in its first step: nothing to track

    asyncio.run(main())


def test_start_task_inside_a_task_makes_an_ordinary_task() -> None:
    steps: list[str] = []

    async def handler() -> None:
        steps.append("ran")

    async def main() -> None:
        task = start_task(asyncio.get_running_loop(), handler())
        assert steps == []  # another task is running: the handler waits for a loop turn
        assert task is not None
        await task
        assert steps == ["ran"]

    asyncio.run(main())


async def _noop() -> None:
    return None


@aio
async def test_what_one_turn_of_the_loop_sends_arrives_whole_and_in_order(clients: Clients) -> None:
    # Requests, answers and informs sent from the client's loop leave once per turn, in one
    # write: the informs sent before a request reach the receiver before it, none is lost,
    # and every answer of a gathered batch comes back.
    receiver = await clients("receiver")
    sender = await clients("sender")
    seen: list[int] = []

    @receiver.event
    async def on_winerp_information(data: Any, source: str) -> None:
        seen.append(data)

    @receiver.route
    async def how_many(source: str) -> int:
        return len(seen)

    @receiver.route
    async def echo(source: str, value: int) -> int:
        return value

    for number in range(500):  # no await yields here: all of it is one turn of the loop
        await sender.inform(number, "receiver")
    assert await sender.request("how_many", "receiver") == 500
    assert seen == list(range(500))
    answers = await asyncio.gather(*(sender.request("echo", "receiver", value=n) for n in range(200)))
    assert answers == list(range(200))


def test_a_loop_with_a_task_factory_makes_handler_tasks_with_it() -> None:
    made: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coroutine: Any, **options: Any) -> asyncio.Task[Any]:
        made.append("by the factory")
        return asyncio.Task(coroutine, loop=loop, **options)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(factory)
        started: list[asyncio.Task[None] | None] = []
        loop.call_soon(lambda: started.append(start_task(loop, _noop())))
        await asyncio.sleep(0.01)
        assert made == ["by the factory"]
        assert started[0] is not None

    asyncio.run(main())
