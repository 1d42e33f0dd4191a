"""The writing side of one connection: every frame a client sends leaves through its `Writer`.

One queue and one lock keep frames whole and in order, whoever sends them (callers'
threads, worker threads, the reader answering pings, the facade's event loop). Fewer
writes is the point of everything else here: a system call per message is most of what
sending costs, so frames that come together leave together, and a frame that is alone
leaves at once.

* Several threads at once: a thread that finds the lock taken queues its frame, and the
  thread writing takes it along (`send`).
* On the facade's event loop (`batch_writes`): with other calls in flight, the frames a
  turn of the loop sends are written 16 at a time and the rest when the turn ends; the
  answers coroutine routes give while the loop handles several messages just read leave
  the same way, the rest after the last message (`gather` / `write_gathered`).
* Elsewhere, a request sent while other calls are in flight, an answer given while other
  requests are being served, and a burst of informs are queued for the flusher thread
  (``winerp-writer-<name>``, started by the first of them), which writes what is queued
  each time it wakes.

What leaves in one write is framed there (`_framed`): to a hub that reads batches (its
`Welcome` says so), the binary messages among it go as one websocket message carrying them all,
within the hub's limit, so a burst costs one masking and one frame instead of one each.

Lock: `Writer.lock`, the right to write the socket (second in the client's lock order, see
`winerp.client.connection`). Whoever holds it looks at the queue again after releasing it:
a thread that found it taken left its frame there. A failed write tells the connection
(``on_failure``), which closes; a bug in the flusher thread is reported to it (``on_bug``),
which closes with 1011.
"""

from __future__ import annotations

import collections
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable

from ..protocol.frames import batch_header
from ..wire.websocket import OP_BINARY, OP_CLOSE, client_frame
from .events import LoopTurns

__all__ = ["Writer"]

logger = logging.getLogger("winerp.client")

# Frames queued behind a busy writer before further senders wait for it (back-pressure).
_MAX_QUEUED_FRAMES = 1024
# An inform sent within this many seconds of the last write leaves with the ones after it,
# written by the flusher thread: a burst of informs costs one write per batch instead of
# one system call each, and a lone inform is still written at once.
_BURST_WINDOW = 0.0005
# On the facade's loop, gathered frames are written every this many, not only when the turn
# ends: the hub starts on the first while the loop builds the rest. With 64 requests in
# flight (aio), 16 or 32 gave about 1.5x the requests per second of one write per turn.
_LOOP_BATCH = 16


class Writer:
    """Writes one connection's frames; thread-safe.

    Args:
        sock: The connection's socket (written raw, websocket frames built here).
        name: The client's name (for the flusher thread's name).
        on_failure: Called when a write fails (the connection closes).
        on_bug: Called with an unexpected exception of the flusher thread.
    """

    def __init__(
        self,
        sock: socket.socket,
        name: str,
        on_failure: Callable[[], object],
        on_bug: Callable[[Exception], None],
    ) -> None:
        self.sock = sock
        self.name = name
        self._on_failure = on_failure
        self._on_bug = on_bug
        # Messages waiting for the writer, as (opcode, payload): framed when written.
        self.queue: collections.deque[tuple[int, bytes]] = collections.deque()
        #: Non-zero once the hub said it reads batches: binary messages written together
        #: then leave as batches of up to this many bytes (see `winerp.protocol.frames`).
        self.batch_limit = 0
        self.lock = threading.Lock()
        self._last_write = 0.0  # time.monotonic() of the last write
        # The flusher thread (started by the first burst) and its wake-ups; None ends it.
        self._flusher: threading.Thread | None = None
        self._flush_due = False
        self._kicks: queue.SimpleQueue[bool | None] = queue.SimpleQueue()
        self._start_lock = threading.Lock()  # a leaf: held only to start the flusher thread
        self._stopped = False
        # The facade's event loop (see `batch_writes`): its thread, its call_soon, whether a
        # write is due at the end of its turn, whether it is handling several messages just
        # read. The last two are touched on the loop's thread only.
        self._loop_thread: int | None = None
        self._call_soon: Callable[[Callable[[], None]], object] | None = None
        self._turn_flush_due = False
        self._gathering = False

    def send(self, payload: bytes, opcode: int = OP_BINARY, *, wait: bool = False) -> None:
        """Write ``payload`` as one websocket frame, or queue it for the thread already writing.

        Every frame, data or control (pong, close), goes through here or `send_soon`, so
        writes never interleave, and a burst from several threads leaves as one write. With
        ``wait``, return only once the frame has been written (or the write failed), e.g. a
        close frame before the socket is shut. A failed write closes the connection;
        nothing is raised.
        """
        queue = self.queue
        lock = self.lock
        if not queue and lock.acquire(blocking=False):
            # The usual case: nobody else is writing, and nothing waits for a writer.
            try:
                written = self._write(client_frame(opcode, payload))
            finally:
                lock.release()
            if not written or not queue:
                return
            # Frames queued meanwhile by threads that found the lock taken: send them below.
        else:
            queue.append((opcode, payload))
        self._drain(wait)

    def send_soon(self, payload: bytes, *, fire_and_forget: bool = False, crowded: bool = False) -> None:
        """Send a binary message that may leave in one write with others (a request, an answer, an inform).

        Never blocks on a flusher; order is kept. A frame is written at once unless more
        are coming:

        * ``crowded``: the caller knows others are under way (other calls in flight, other
          requests being served);
        * on the facade's event loop: a flush already due this turn, or the loop handling
          several messages just read;
        * a ``fire_and_forget`` frame (an inform) within a burst (the last write was under
          `_BURST_WINDOW` ago, or frames are waiting).

        On the loop the frame is gathered and written 16 to a write, the rest when the turn
        ends (or after the messages read); elsewhere the flusher thread writes it with
        whatever else is queued. A sync client with 64 requests in flight from one thread
        (``submit``) then spends about a quarter less CPU per request in each of the three
        processes. A lone request never waits.
        """
        queue = self.queue
        on_loop = self._loop_thread == threading.get_ident()
        if not (
            crowded
            or (on_loop and (self._turn_flush_due or self._gathering))
            or (fire_and_forget and (queue or time.monotonic() - self._last_write < _BURST_WINDOW))
        ):
            self.send(payload)
            return
        queue.append((OP_BINARY, payload))
        if len(queue) > _MAX_QUEUED_FRAMES or (on_loop and len(queue) >= _LOOP_BATCH):
            # Enough for one write (on the loop), or far ahead of the flusher: this sender
            # writes, or waits for the writer.
            self._drain(wait=False)
        elif on_loop:
            if not self._gathering:  # else `write_gathered` writes it, after the messages read
                self._flush_at_turn_end()
        elif not self._flush_due:
            # Checked after the append: a flusher that already cleared the flag writes this frame.
            self._flush_due = True
            self._kick()

    def send_last(self, close: bytes) -> None:
        """Send the close frame ``close`` after what is queued, and make it the last frame sent.

        RFC 6455 section 5.5.1: nothing may follow a close frame. Once it is out the socket
        is shut for writing (under the lock), so an answer a route handler finishes later
        fails to write instead of following the close frame.
        """
        with self.lock:
            queue = self.queue
            queue.append((OP_CLOSE, close))
            if self._write(self._framed([queue.popleft() for _ in range(len(queue))])):
                try:
                    self.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def stop(self) -> None:
        """The connection is over: the flusher thread (if any) ends; what it had not written is lost."""
        self._stopped = True
        self._kicks.put(None)

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the flusher thread to end, after `stop` (not from the flusher itself)."""
        with self._start_lock:
            self._stopped = True  # no flusher starts from now on
            flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(timeout)

    # the facade's event loop

    def batch_writes(self, turns: LoopTurns | None) -> None:
        """From now on, what the thread of ``turns``'s loop sends may leave once per turn of it."""
        if turns is not None:
            self._loop_thread, self._call_soon = turns

    def gather(self, messages: int) -> bool:
        """The reader is about to handle ``messages`` just read: on the loop, with more than one,
        what is sent meanwhile waits for `write_gathered`. True if it does."""
        self._gathering = messages > 1 and self._loop_thread == threading.get_ident()
        return self._gathering

    def write_gathered(self) -> None:
        """The reader handled what it read: write what was gathered meanwhile."""
        self._gathering = False
        self._drain(wait=False)

    def _flush_at_turn_end(self) -> None:
        """On the loop's thread: have what is queued written when this turn of the loop ends."""
        if self._turn_flush_due:
            return
        assert self._call_soon is not None
        try:
            self._call_soon(self._flush_turn)
        except RuntimeError:  # the loop is closed: no turn ends, so write now
            self._drain(wait=False)
            return
        self._turn_flush_due = True

    def _flush_turn(self) -> None:
        """End of a loop turn: write what it queued (unless another thread is writing, which then does)."""
        self._turn_flush_due = False
        self._drain(wait=False)

    # the flusher thread

    def _kick(self) -> None:
        """Wake the flusher thread (start it the first time)."""
        if self._flusher is None:
            with self._start_lock:
                if self._flusher is None and not self._stopped:
                    self._flusher = threading.Thread(
                        target=self._flush_loop, name=f"winerp-writer-{self.name}", daemon=True
                    )
                    self._flusher.start()
        self._kicks.put(True)

    def _flush_loop(self) -> None:
        """Write what is queued each time it is woken, until `stop`."""
        while self._kicks.get():
            # Cleared before the write: a frame queued from here on asks for another flush.
            self._flush_due = False
            try:
                self._drain(wait=True)
            except Exception as exc:  # noqa: BLE001 - a bug: reported, costs this connection only
                self._on_bug(exc)
                return

    # writing

    def _drain(self, wait: bool) -> None:
        """Write what is queued, unless another thread is writing (which then does).

        The rule that keeps a frame from waiting for a write nobody makes: whoever holds
        the lock looks at the queue again after releasing it, since a thread that found the
        lock taken queued its frame and left it to the holder.
        """
        queue = self.queue
        lock = self.lock
        while True:
            while queue:
                if not lock.acquire(blocking=wait or len(queue) > _MAX_QUEUED_FRAMES):
                    return  # the holder looks at the queue again after releasing the lock
                try:
                    # Only the lock holder takes from the queue, but the writer before it may
                    # have emptied the queue between the check above and the acquire.
                    if queue and not self._write(self._framed([queue.popleft() for _ in range(len(queue))])):
                        return
                finally:
                    lock.release()
            if not wait:
                return
            # Another thread took the frame from the queue: wait until its write is over.
            # Holding the lock for that counts as holding it: look at the queue again.
            with lock:
                pass
            if not queue:
                return

    def _framed(self, messages: list[tuple[int, bytes]]) -> bytes:
        """The websocket frames of ``messages``, in order; binary ones batched if the hub reads batches."""
        limit = self.batch_limit - 3  # room for the batch's own header
        parts: list[bytes] = []
        batch: list[bytes] = []
        size = 0
        for opcode, payload in messages:
            if batch and (opcode != OP_BINARY or size + len(payload) > limit):
                parts.append(_batch_frame(batch))
                batch, size = [], 0
            if opcode == OP_BINARY and limit > 0:
                batch.append(payload)
                size += len(payload)
            else:
                parts.append(client_frame(opcode, payload))
        if batch:
            parts.append(_batch_frame(batch))
        return b"".join(parts)

    def _write(self, data: bytes) -> bool:
        """Write ``data`` (hold the lock); on failure tell the connection and return False."""
        try:
            self.sock.sendall(data)
            self._last_write = time.monotonic()
        except OSError as exc:
            logger.debug("send failed: %s", exc)
            self.queue.clear()
            self._on_failure()
            return False
        return True


def _batch_frame(payloads: list[bytes]) -> bytes:
    """One masked frame carrying ``payloads``: the message itself if alone, else their batch."""
    if len(payloads) == 1:
        return client_frame(OP_BINARY, payloads[0])
    return client_frame(OP_BINARY, batch_header(len(payloads)) + b"".join(payloads))
