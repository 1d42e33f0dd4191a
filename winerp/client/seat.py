"""Who reads a connection's socket: its own thread, or a guest (an event loop).

A connection has two possible readers. Its own thread always can. A facade whose callers
wait on an event loop may offer the loop as a guest: the loop then reads the socket itself
(through a duplicate descriptor it watches), so an answer reaches the task awaiting it
with no hand-off between threads. That saves a thread wake-up per message (the asyncio
round trip goes from about 660 to 520 microseconds), but a loop can stall (user code
blocks it) or close without a word, so the thread stands by and reads in the guest's
place when bytes wait a whole tick unread.

The rule lives here, in one class with three states::

    THREAD --seat_guest()--> GUEST --guest can no longer read (stand_by)--> THREAD
       \\                        |
        `------- close() -------+--> CLOSED   (from any state; final)

Whatever the state, one read at a time: a reader takes the seat (``try_enter``, without
waiting) before it touches the socket and gives it back (``leave``) after; a reader that
finds the seat taken skips, since the one inside reads what woke it.
"""

from __future__ import annotations

import enum
import functools
import threading
from collections.abc import Callable

__all__ = ["ReaderSeat", "SeatState"]


class SeatState(enum.Enum):
    """Who reads the socket."""

    THREAD = "thread"  # the connection's own thread waits on the socket and reads
    GUEST = "guest"  # a guest reads; the thread stands by
    CLOSED = "closed"  # the connection ended: nobody reads


class ReaderSeat:
    """The right to read one connection's socket. Thread-safe.

    ``try_enter()`` (no wait; True if taken) and ``leave()`` bracket every read. The state
    changes under a lock of its own (``_turn``), which also wakes a standing-by thread
    at once when the connection closes.
    """

    def __init__(self) -> None:
        self.state = SeatState.THREAD
        lock = threading.Lock()
        # The lock's own methods: a read pays no Python call for the seat (it is taken per read).
        self.try_enter: Callable[[], bool] = functools.partial(lock.acquire, False)
        """Take the seat for one read if it is free; False (at once) if another reader has it."""
        self.leave: Callable[[], None] = lock.release
        """Give the seat back after the read."""
        self._turn = threading.Condition(threading.Lock())
        self._guest: Callable[[], bool] | None = None
        self._reads = 0

    def note_read(self) -> None:
        """Count a read from the socket (call while seated): a guest that reads is alive."""
        self._reads += 1

    def seat_guest(self, can_read: Callable[[], bool]) -> bool:
        """A guest reads from now on; ``can_read()`` stays true while it can. False once closed."""
        with self._turn:
            if self.state is not SeatState.THREAD:
                return False
            self._guest = can_read
            self.state = SeatState.GUEST
            return True

    def close(self) -> None:
        """Nobody reads any more; a thread standing by wakes at once. Idempotent."""
        with self._turn:
            self.state = SeatState.CLOSED
            self._guest = None
            self._turn.notify_all()

    def stand_by(self, tick: float, unread: Callable[[], bool]) -> bool:
        """For the connection's thread while a guest reads: wait ``tick``; True if it should read now.

        True when bytes are waiting (``unread()``) and the guest read nothing for the whole
        tick: it has stalled, so the thread reads in its place this once. A guest that can
        no longer read at all (its loop closed) gives the seat back to the thread for good.
        Returns at once, False, when the seat is not the guest's (or on `close`).
        """
        seen = self._reads
        with self._turn:
            if self.state is SeatState.GUEST:
                self._turn.wait(tick)
            if self.state is not SeatState.GUEST:
                return False
            guest = self._guest
            assert guest is not None
            if not guest():
                self._guest = None
                self.state = SeatState.THREAD
                return False
        return self._reads == seen and unread()
