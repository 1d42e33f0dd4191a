"""Readiness of many sockets at once, for the hub's loop: epoll on Linux, `selectors` elsewhere.

`Poller.poll` hands back ``(fd, events)`` pairs just as epoll gives them, with no object
built per event: the hub's loop looks the connection up by descriptor itself. `IN` and `OUT`
are epoll's own bits; any other bit (a hang-up, an error) means the socket wants attention
for reading and writing alike, so callers test ``events & ~OUT`` (readable) and
``events & ~IN`` (writable).
"""

from __future__ import annotations

import select
import selectors
import socket
from collections.abc import Callable

__all__ = ["IN", "OUT", "Poller"]

IN = 0x001  # select.EPOLLIN
OUT = 0x004  # select.EPOLLOUT


class Poller:
    """Watches sockets for reading (always) and writing (on request). One thread at a time."""

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._selector = selectors.DefaultSelector() if self._epoll is None else None
        #: ``poll(timeout)``: the ``(fd, events)`` pairs ready within ``timeout`` seconds.
        self.poll: Callable[[float], list[tuple[int, int]]] = (
            self._epoll.poll if self._epoll is not None else self._select
        )

    def register(self, sock: socket.socket) -> None:
        """Watch ``sock`` for reading."""
        if self._epoll is not None:
            self._epoll.register(sock.fileno(), IN)
        else:
            assert self._selector is not None
            self._selector.register(sock, selectors.EVENT_READ)

    def watch_writes(self, sock: socket.socket, write: bool) -> None:
        """Watch ``sock`` for writing too, or no longer."""
        if self._epoll is not None:
            self._epoll.modify(sock.fileno(), IN | OUT if write else IN)
        else:
            assert self._selector is not None
            self._selector.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0))

    def unregister(self, sock: socket.socket) -> None:
        """Stop watching ``sock``; a socket not watched is ignored."""
        try:
            if self._epoll is not None:
                self._epoll.unregister(sock.fileno())
            else:
                assert self._selector is not None
                self._selector.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass

    def close(self) -> None:
        """Release the poller itself."""
        if self._epoll is not None:
            self._epoll.close()
        if self._selector is not None:
            self._selector.close()

    def _select(self, timeout: float) -> list[tuple[int, int]]:
        assert self._selector is not None
        return [
            (key.fd, (IN if mask & selectors.EVENT_READ else 0) | (OUT if mask & selectors.EVENT_WRITE else 0))
            for key, mask in self._selector.select(timeout)
        ]
