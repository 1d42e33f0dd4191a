"""Every error winerp raises, under one root.

The tree::

    WinerpError
    ├── ClientNotReadyError        not started, not ready, on hold, or the connection is down
    ├── UnauthorizedError          the hub refused this client's credentials
    ├── HubUnreachable             (also ConnectionError) no hub accepted the connection
    ├── DestinationNotFound        the named client is not connected
    ├── RouteNotFound              the destination has no such route
    ├── ClientRuntimeError         the remote handler raised
    ├── RequestTimeout             (also TimeoutError) no answer in time
    ├── PeerDisconnected           (also ConnectionError) the destination left before answering
    ├── ConnectionLost             (also ConnectionError) this client's own connection dropped
    ├── PayloadTooLarge            a message exceeds the size limit
    ├── InvalidRouteType           a route handler is not callable
    └── ProtocolError              a peer sent something the protocol does not allow

Errors that cross the wire (raised by a remote handler or by the hub) arrive as the same
classes; a remote handler's own exception arrives as `ClientRuntimeError`, never re-raised
as its original type, so local and remote failures stay distinct.
"""

from __future__ import annotations

__all__ = [
    "ClientNotReadyError",
    "ClientRuntimeError",
    "ConnectionLost",
    "DestinationNotFound",
    "HubUnreachable",
    "InvalidRouteType",
    "PayloadTooLarge",
    "PeerDisconnected",
    "ProtocolError",
    "RequestTimeout",
    "RouteNotFound",
    "UnauthorizedError",
    "WinerpError",
]


class WinerpError(Exception):
    """Root of every error raised by winerp."""


class ClientNotReadyError(WinerpError):
    """The call needs a live connection and the client is not started, not ready, or on hold."""


class UnauthorizedError(WinerpError):
    """The hub refused the client's credentials (a wrong or missing token)."""


class HubUnreachable(WinerpError, ConnectionError):
    """No hub accepted the connection (refused, unreachable, or the handshake failed)."""


class DestinationNotFound(WinerpError):
    """The request names a client that is not connected to the hub."""


class RouteNotFound(WinerpError):
    """The destination is connected but has no route of that name."""


class ClientRuntimeError(WinerpError):
    """The remote handler raised.

    ``str(error)`` begins with the remote exception's type: ``"ValueError: bad user id 42"``.

    Attributes:
        remote_type: The class name of the exception raised by the remote handler.
        remote_message: Its message (``str(exc)``).
        remote_traceback: The formatted remote traceback, as text.
    """

    def __init__(
        self, message: str, *, remote_type: str = "", remote_message: str = "", remote_traceback: str = ""
    ) -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        message = super().__str__()
        kind = self.remote_type
        if not kind or message == kind or message.startswith(f"{kind}:"):
            return message  # the type is unknown (some winerp 1.x answers), or already said
        return f"{kind}: {message}" if message else kind


class RequestTimeout(WinerpError, TimeoutError):
    """No answer arrived within the timeout."""


class PeerDisconnected(WinerpError, ConnectionError):
    """The destination disconnected before it answered."""


class ConnectionLost(WinerpError, ConnectionError):
    """This client's own connection dropped, or was closed, with the call in flight."""


class PayloadTooLarge(WinerpError):
    """An encoded message exceeds the configured size limit."""


class InvalidRouteType(WinerpError, TypeError):
    """A route handler is not callable."""


class ProtocolError(WinerpError):
    """A peer sent a frame the protocol does not allow."""
