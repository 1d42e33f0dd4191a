"""The NATS connection on its own asyncio loop thread, beside the hub's loop.

nats-py is asyncio only; the hub runs its own poll loop. The bridge runs nats-py on a thread
of its own (``winerp-cluster``) and hands work between the two loops through two deques:

* hub → NATS: `publish` appends to the outbox and, if no drain is scheduled yet, schedules
  one with a single ``call_soon_threadsafe``: a burst of messages costs one wake-up.
* NATS → hub: whatever arrives (a message, the end of a key-value call, a connection change)
  is appended to the inbox as ``(function, argument)``, and the hub's waker is poked once
  per batch; the hub runs the batch on its own thread (`run_inbox`).

Neither side ever blocks on the other: appends to a deque are atomic under the GIL.

Frames between hubs usually skip the bridge: the hub's loop has a connection of its own for
them (`winerp.cluster.direct`). They go through `publish` and `subscribe` here only where the
hub could not open that connection, or while it opens another.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from . import ClusterUnavailable

__all__ = ["Bridge"]

logger = logging.getLogger("winerp.hub.cluster")

Handler = Callable[[Any], None]


class Bridge:
    """One NATS connection run on a loop thread of its own.

    Args:
        servers: NATS server URLs (``nats://host:port``).
        wake: Called (from the NATS thread) when the inbox goes from empty to not empty;
            it must only poke the hub's loop.
        on_down: Run on the hub's thread when the connection to NATS is lost.
        on_up: Run on the hub's thread when the connection comes back (not at the start).
        name: The connection's name, as NATS monitoring shows it.
    """

    def __init__(
        self,
        servers: list[str],
        *,
        wake: Callable[[], None],
        on_down: Handler,
        on_up: Handler,
        name: str = "winerp-hub",
    ) -> None:
        self.servers = servers
        self.name = name
        self._wake = wake
        self._on_down = on_down
        self._on_up = on_up
        self.loop = _new_loop()
        self.nc: Any = None
        self.js: Any = None
        #: True while the NATS connection is up (read from any thread).
        self.connected = False
        self._outbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self._drain_scheduled = False
        self._inbox: collections.deque[tuple[Handler, Any]] = collections.deque()
        self._woken = False
        self._thread: threading.Thread | None = None
        self._closing = False
        #: Run on the hub's thread after each batch of the inbox (the hub's loop is awake).
        self.on_turn: Callable[[], None] | None = None

    # the hub's side

    def start(self, timeout: float = 10.0) -> None:
        """Start the loop thread and connect; return once connected.

        Raises:
            ClusterUnavailable: no NATS server answered within ``timeout``.
        """
        self._thread = threading.Thread(target=self.loop.run_forever, name="winerp-cluster", daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._connect(timeout), self.loop)
        try:
            future.result(timeout + 5)
        except Exception as exc:
            self.stop()
            raise ClusterUnavailable(
                f"cannot reach the cluster's NATS server at {', '.join(self.servers)}: {exc}"
            ) from exc

    def stop(self, timeout: float = 5.0) -> None:
        """Close the NATS connection and end the loop thread. Idempotent."""
        if self._closing or self._thread is None:
            return
        self._closing = True
        if self.nc is not None:
            future = asyncio.run_coroutine_threadsafe(self._close(), self.loop)
            try:
                future.result(timeout)
            except Exception:  # noqa: BLE001 - closing: nothing more to do about it
                pass
        try:
            asyncio.run_coroutine_threadsafe(_cancel_all(), self.loop).result(timeout)
        except Exception:  # noqa: BLE001 - closing: nothing more to do about it
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()

    def publish(self, subject: str, data: bytes) -> None:
        """Send ``data`` to ``subject``, at most once; never blocks. Any thread."""
        self._outbox.append((subject, data))
        if not self._drain_scheduled:
            self._drain_scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: the hub is stopping
                pass

    def submit(self, work: Callable[[], Coroutine[Any, Any, Any]], done: Handler | None = None) -> None:
        """Run ``work()`` on the NATS loop; then ``done(result or exception)`` on the hub's thread."""

        async def run() -> None:
            try:
                result: Any = await work()
            except Exception as exc:  # noqa: BLE001 - handed to `done`, which decides
                result = exc
            if done is not None:
                self.deliver(done, result)

        try:
            self.loop.call_soon_threadsafe(self._spawn, run)
        except RuntimeError:
            pass

    def subscribe(self, subject: str, handler: Handler) -> None:
        """Call ``handler(data)`` on the hub's thread for each message on ``subject``. Any thread."""

        async def work() -> None:
            async def on_message(msg: Any) -> None:
                self.deliver(handler, msg.data)

            await self.nc.subscribe(subject, cb=on_message, pending_msgs_limit=1_000_000)

        self.submit(work)

    def run_inbox(self) -> None:
        """Run what arrived from NATS, in order. Only on the hub's thread."""
        self._woken = False
        inbox = self._inbox
        while inbox:
            handler, argument = inbox.popleft()
            try:
                handler(argument)
            except Exception:  # one bad message must not stop the batch
                logger.exception("handling a cluster event failed")
        if self.on_turn is not None:
            self.on_turn()

    # the NATS side

    def deliver(self, handler: Handler, argument: Any) -> None:
        """Queue ``handler(argument)`` for the hub's thread; wake the hub once per batch."""
        self._inbox.append((handler, argument))
        if not self._woken:
            self._woken = True
            self._wake()

    def _spawn(self, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = self.loop.create_task(run())
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    def _drain(self) -> None:
        nc = self.nc
        transport: Any = getattr(nc, "_transport", None)
        if self.connected and nc.is_connected and type(transport).__name__ == "TcpTransport":
            # The hot path: the batch leaves in this very loop turn, as one write of PUB
            # commands. nats-py's own publish would queue each message for its flusher task
            # (a future and a queue put per message, and one more loop turn); on a plain TCP
            # connection its writes go to the same stream, in order, so this is equivalent.
            self._drain_scheduled = False
            outbox = self._outbox
            commands = []
            while outbox:
                subject, data = outbox.popleft()
                commands.append(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(data), data))
            try:
                transport.write(b"".join(commands))
            except Exception as exc:  # noqa: BLE001 - a failing connection: at most once
                logger.debug("publish failed: %s", exc)
            return
        self._spawn(self._drain_all)

    async def _drain_all(self) -> None:
        # The flag drops first: a publish that comes meanwhile schedules a new drain, and
        # this one may take it too (then that drain finds the outbox empty).
        self._drain_scheduled = False
        outbox = self._outbox
        if not self.connected:
            outbox.clear()  # at most once: nothing is queued while NATS is away
            return
        publish = self.nc.publish
        while outbox:
            subject, data = outbox.popleft()
            try:
                # Appends to nats-py's pending buffer; its flusher task writes the batch.
                await publish(subject, data)
            except Exception as exc:  # noqa: BLE001 - a closed or failed connection: at most once
                logger.debug("publish to %s failed: %s", subject, exc)

    async def _connect(self, timeout: float) -> None:
        import nats

        # nats-py keeps retrying a first connection as it would a reconnection: bounded here.
        self.nc = await asyncio.wait_for(self._open(nats, timeout), timeout)
        self.js = self.nc.jetstream(timeout=2.0)
        self.connected = True

    async def _open(self, nats: Any, timeout: float) -> Any:
        return await nats.connect(
            self.servers,
            name=self.name,
            connect_timeout=max(1, int(timeout)),
            reconnect_time_wait=0.5,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            ping_interval=1,
            max_outstanding_pings=3,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
        )

    async def _close(self) -> None:
        try:
            await asyncio.wait_for(self.nc.close(), 3)
        except Exception:  # noqa: BLE001 - closing: nothing more to do about it
            pass

    async def _disconnected(self) -> None:
        if self.connected and not self._closing:
            self.connected = False
            logger.warning("lost the connection to the cluster's NATS server")
            self.deliver(self._on_down, None)

    async def _reconnected(self) -> None:
        if not self.connected and not self._closing:
            self.connected = True
            logger.warning("connected to the cluster's NATS server again")
            self.deliver(self._on_up, None)

    async def _error(self, exc: Exception) -> None:
        logger.debug("NATS: %s", exc)


# Tasks are kept referenced until they end (the loop itself keeps only weak references).
_tasks: set[asyncio.Task[Any]] = set()


async def _cancel_all() -> None:
    """Cancel the loop's other tasks (watches, nats-py's own) and let them end."""
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed (nats-py spends its time in the loop), else asyncio's."""
    import os

    if os.environ.get("WINERP_NO_UVLOOP") != "1":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()
