"""winerp: call functions in other Python processes through a websocket hub.

A `Hub` routes named requests and fire-and-forget informs between named clients. Use
`winerp.sync.Client` from blocking code and `winerp.aio.Client` (also `winerp.Client`) from
asyncio code; both speak to the same hub and to each other.
"""

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    # What the lazy `__getattr__` below returns, spelled out for type checkers: they see
    # `winerp.Client` as the asyncio client class and `winerp.sync` / `winerp.aio` as modules.
    from . import aio as aio
    from . import sync as sync
    from .aio import Client as Client

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


#: Reached through `__getattr__`: imported on first use, so that `import winerp` stays quick
#: and a blocking program never imports asyncio machinery it does not need.
_LAZY = ("Client", "aio", "sync")


def __getattr__(name: str) -> object:
    # winerp.Client is the asyncio client (the 1.x import path); winerp.sync and winerp.aio
    # are the two client packages, reachable after a plain `import winerp`.
    if name == "Client":
        from .aio import Client

        return Client
    if name in ("aio", "sync"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
