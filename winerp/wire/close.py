"""The websocket close codes winerp sends, in one enum for the whole package (RFC 6455, 7.4.1)."""

from __future__ import annotations

import enum

__all__ = ["CloseCode"]


class CloseCode(enum.IntEnum):
    """Why a websocket was closed; the number goes in the close frame."""

    #: The purpose of the connection is fulfilled (a client's `close()`, an answer to a close).
    NORMAL = 1000
    #: The hub is going away (stopping); clients reconnect at once.
    GOING_AWAY = 1001
    #: The peer broke the websocket framing or the winerp protocol.
    PROTOCOL_ERROR = 1002
    #: A text message was not UTF-8, or a message did not decode.
    INVALID_DATA = 1007
    #: The peer broke a rule of the hub (a silent peer, a bad name ...).
    POLICY_VIOLATION = 1008
    #: A message was over the size limit.
    TOO_BIG = 1009
    #: A bug on this side: the connection is given up, the rest goes on.
    INTERNAL_ERROR = 1011
    #: The hub is restarting.
    SERVICE_RESTART = 1012
    #: The peer read too slowly: too much was queued for it.
    OVERLOADED = 1013
