"""TLS for a ``wss://`` hub: the one module of the hub that imports `ssl`.

The hub imports it only when it has an ``ssl_context``: `ssl` loads OpenSSL, about 4 MB of
memory that a hub without TLS need not carry.
"""

from __future__ import annotations

import enum
import logging
import socket
import ssl

__all__ = ["WOULD_BLOCK", "Step", "handshake_step", "has_pending"]

logger = logging.getLogger("winerp.hub")

#: What a non-blocking read or write of a TLS socket raises when it cannot go on yet.
WOULD_BLOCK: tuple[type[OSError], ...] = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Step(enum.Enum):
    """How far one step of a TLS handshake got."""

    DONE = "done"
    WANT_READ = "want read"
    WANT_WRITE = "want write"
    FAILED = "failed"


def handshake_step(sock: socket.socket) -> Step:
    """Take the server side of a TLS handshake as far as it goes without blocking."""
    assert isinstance(sock, ssl.SSLSocket)
    try:
        sock.do_handshake()
    except ssl.SSLWantReadError:
        return Step.WANT_READ
    except ssl.SSLWantWriteError:
        return Step.WANT_WRITE
    except (OSError, ValueError) as exc:
        # Not worth more than a debug line: port scanners and plain-HTTP clients end here.
        logger.debug("TLS handshake failed: %s", exc)
        return Step.FAILED
    return Step.DONE


def has_pending(sock: socket.socket) -> bool:
    """Whether decrypted bytes wait in ``sock`` beyond what the poller can see."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
