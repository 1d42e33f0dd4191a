"""Defaults that the hub and the clients share (API.md: host, port, message size)."""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_MAX_MESSAGE_SIZE"]

#: Hubs bind, and clients connect to, this address unless told otherwise.
DEFAULT_HOST: Final = "127.0.0.1"
#: The winerp 1.x default port.
DEFAULT_PORT: Final = 13254
#: Largest message a hub or a client accepts unless configured otherwise.
DEFAULT_MAX_MESSAGE_SIZE: Final = 8 * 1024 * 1024
