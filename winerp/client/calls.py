"""Calls in flight: one request (`Call`), several at once (`Gathering`), and their table.

A call is ended exactly once, by whichever thread takes it out of the `CallTable` first:
the reader with the answer, a timer or waiter with `RequestTimeout`, or a dropped
connection with `ConnectionLost`. Its listener (given by the facade) learns of it at
once, on that thread; how the facade then wakes its caller is its own business.

`Deadline` is the one way the client side counts down a wait made of several steps
(``start(timeout)`` spans connection attempts and the pauses between them).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

from .. import errors

__all__ = ["Call", "CallTable", "Deadline", "Gathering", "PeersCall", "PingCall", "resolve"]


def resolve(future: concurrent.futures.Future[Any], value: Any = None, error: BaseException | None = None) -> bool:
    """Settle ``future`` unless it is already settled or cancelled; True if this call did."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except concurrent.futures.InvalidStateError:
        return False
    return True


class Deadline:
    """A moment on the monotonic clock by which a wait must be over; ``None``: no deadline.

    Args:
        timeout: Seconds from now, or None for a wait without end.
    """

    __slots__ = ("at",)

    def __init__(self, timeout: float | None) -> None:
        self.at = None if timeout is None else time.monotonic() + timeout

    def passed(self, now: float | None = None) -> bool:
        """True once the deadline is behind us (never, without one)."""
        return self.at is not None and (time.monotonic() if now is None else now) >= self.at

    def remaining(self, most: float) -> float:
        """Seconds left, at most ``most`` and at least 0 (``most`` without a deadline)."""
        if self.at is None:
            return most
        return max(0.0, min(most, self.at - time.monotonic()))

    def within(self, longest: float, shortest: float) -> Deadline:
        """A deadline for one step of this wait: ``longest`` from now, cut to this deadline.

        Never closer than ``shortest`` from now, so that a step taken at the deadline still
        gets to hear an answer (a refusal, say) that is already on its way.
        """
        step = Deadline(None)
        now = time.monotonic()
        end = now + longest if self.at is None else min(self.at, now + longest)
        step.at = max(now + shortest, end)
        return step


class Call:
    """One request in flight, ended exactly once: with a value or with an error.

    Lighter than a `concurrent.futures.Future` (no lock, no condition): the core ends a call
    only after taking it out of its `CallTable`, so one thread alone ever ends it, and the
    listener given at creation learns of it at once, on that thread. ``timeout`` is how
    long its caller waits; the facade waits that long, then asks the core to `expire` it.
    A call nobody waits on (``submit``) has a ``deadline`` instead, kept by its `CallTable`.
    """

    __slots__ = ("deadline", "error", "id", "listener", "timeout", "value")

    def __init__(self, request_id: int, listener: Callable[[Call], None], timeout: float) -> None:
        self.id = request_id
        self.listener = listener
        self.timeout = timeout
        self.value: Any = None
        self.error: BaseException | None = None
        #: time.monotonic() by which the table ends it (a call nobody waits on), else None.
        self.deadline: float | None = None

    def end(self, value: Any, error: BaseException | None) -> None:
        """Record the outcome and tell the listener. Called once, by the core."""
        self.value = value
        self.error = error
        self.listener(self)

    def outcome(self) -> Any:
        """The value, or raise the error."""
        if self.error is not None:
            raise self.error
        return self.value


class PingCall(Call):
    """A ping: ends with True when answered, False when the peer is not there (or left)."""

    __slots__ = ()

    def end(self, value: Any, error: BaseException | None) -> None:
        if isinstance(error, (errors.DestinationNotFound, errors.PeerDisconnected)):
            super().end(False, None)
        elif error is not None:
            super().end(None, error)
        else:
            super().end(True, None)


class PeersCall(Call):
    """The hub's ``peers``: ends with a list of names, or a dict of names to routes."""

    __slots__ = ("routes",)

    def __init__(self, request_id: int, listener: Callable[[Call], None], timeout: float, routes: bool) -> None:
        super().__init__(request_id, listener, timeout)
        self.routes = routes

    def end(self, value: Any, error: BaseException | None) -> None:
        if error is not None:
            super().end(None, error)
        elif self.routes and not isinstance(value, dict):
            # A hub that ignores the option answers with names only: say so, do not guess.
            super().end(None, errors.ProtocolError("this hub does not list its clients' routes (an older hub)"))
        elif self.routes:
            super().end({name: list(routes or ()) for name, routes in value.items()}, None)
        else:
            super().end(list(value), None)


class CallTable:
    """The calls in flight, by request id. Whoever pops a call ends it.

    Thread-safe without a lock of its own: ``dict.pop`` and item assignment are atomic, so
    of the threads that race to end a call (the answer, the timeout, the drop) exactly one
    gets it.

    A call with a ``deadline`` (its caller does not wait) is also kept among the
    unattended ones, which `expire_due` ends once their deadline has passed.
    """

    def __init__(self) -> None:
        self._calls: dict[int, Call] = {}
        self._unattended: dict[int, Call] = {}

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, call: Call) -> None:
        """Put ``call`` in flight."""
        self._calls[call.id] = call
        if call.deadline is not None:
            self._unattended[call.id] = call

    def take(self, request_id: int) -> Call | None:
        """Take the call of ``request_id`` out of the table, to end it; None if gone already."""
        call = self._calls.pop(request_id, None)
        if call is not None and call.deadline is not None:
            self._unattended.pop(request_id, None)
        return call

    def end(self, call: Call, value: Any, error: BaseException | None) -> None:
        """End ``call`` unless another thread has taken it already (or is ending it now)."""
        if self.take(call.id) is not None:
            call.end(value, error)

    def expire_due(self, now: float) -> None:
        """End with `RequestTimeout` every unattended call whose deadline is ``now`` or before."""
        if self._unattended:
            for call in list(self._unattended.values()):  # a copy: other threads end calls meanwhile
                if call.deadline is not None and call.deadline <= now:
                    self.end(call, None, timed_out(call.timeout))

    def fail_all(self, error: errors.WinerpError) -> None:
        """End every call in flight with ``error`` (the connection dropped)."""
        calls = self._calls
        while calls:
            try:
                _, call = calls.popitem()
            except KeyError:
                break
            self._unattended.pop(call.id, None)
            call.end(None, error)


def timed_out(timeout: float) -> errors.RequestTimeout:
    """The error of a call whose caller waited ``timeout`` seconds for nothing."""
    return errors.RequestTimeout(f"no answer within {timeout} s")


class Gathering:
    """The requests of one ``request_many``, ended together.

    ``future`` resolves to ``{name: value or WinerpError}`` once every call has ended.
    ``timeout`` is how long its caller waits; the facade then calls `expire`.
    """

    def __init__(self, table: CallTable, timeout: float) -> None:
        self._table = table
        self.timeout = timeout
        self._lock = threading.Lock()
        self._calls: dict[str, Call] = {}
        self._results: dict[str, Any] = {}
        self._expected: int | None = None
        self.future: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()

    def add(self, name: str, call: Call) -> None:
        """Count ``call`` as the request to ``name`` (unless it has ended already)."""
        with self._lock:
            if name not in self._results:
                self._calls[name] = call

    def listener(self, name: str) -> Callable[[Call], None]:
        """The listener of the call to ``name``: records its outcome."""

        def ended(call: Call) -> None:
            self.record(name, call.error if call.error is not None else call.value)

        return ended

    def expect(self, count: int) -> None:
        """Every request is sent: the gathering ends once ``count`` outcomes are in."""
        with self._lock:
            self._expected = count
            done = len(self._results) == count
        if done:
            self._finish()

    def record(self, name: str, outcome: Any) -> None:
        """The outcome of the request to ``name``: its value, or the error that ended it."""
        with self._lock:
            self._results[name] = outcome
            done = self._expected is not None and len(self._results) == self._expected
        if done:
            self._finish()

    def fail(self, error: BaseException) -> None:
        """End the whole gathering with ``error`` (e.g. the hub could not list the clients)."""
        resolve(self.future, error=error)

    def _finish(self) -> None:
        resolve(self.future, dict(sorted(self._results.items())))

    def expire(self) -> None:
        """End every call still in flight with `RequestTimeout` (its caller waited ``timeout``)."""
        with self._lock:
            calls = list(self._calls.values())
            if self._expected is None:
                self._expected = len(self._results)
        for call in calls:
            self._table.end(call, None, timed_out(self.timeout))
        if not self.future.done() and self._expected is not None and len(self._results) >= self._expected:
            self._finish()
