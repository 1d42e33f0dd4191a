"""winerp: call functions in other Python processes through a websocket hub.

A `Hub` routes named requests and fire-and-forget informs between named clients. Use
`winerp.sync.Client` from blocking code and `winerp.aio.Client` (also `winerp.Client`) from
asyncio code; both speak to the same hub and to each other.
"""

from .errors import (
    ClientNotReadyError,
    ClientRuntimeError,
    ConnectionLost,
    DestinationNotFound,
    HubUnreachable,
    InvalidRouteType,
    PayloadTooLarge,
    PeerDisconnected,
    ProtocolError,
    RequestTimeout,
    RouteNotFound,
    UnauthorizedError,
    WinerpError,
)
from .hub import Hub

__version__ = "2.0.0"

#: The winerp 1.x name of `Hub`.
Server = Hub

__all__ = [
    "Client",
    "ClientNotReadyError",
    "ClientRuntimeError",
    "ConnectionLost",
    "DestinationNotFound",
    "Hub",
    "HubUnreachable",
    "InvalidRouteType",
    "PayloadTooLarge",
    "PeerDisconnected",
    "ProtocolError",
    "RequestTimeout",
    "RouteNotFound",
    "Server",
    "UnauthorizedError",
    "WinerpError",
    "__version__",
]


def __getattr__(name: str) -> object:
    # winerp.Client is the asyncio client (the 1.x import path); imported on first use so
    # that blocking programs never import asyncio machinery they do not need.
    if name == "Client":
        from .aio import Client

        return Client
    raise AttributeError(f"module 'winerp' has no attribute {name!r}")
