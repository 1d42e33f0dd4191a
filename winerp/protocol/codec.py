"""Codecs: how one connection's wire messages become native frames, and back.

Rules of this module: no I/O, no threads, no clock. The hub holds one codec per connection
(`NativeCodec` here, `winerp.protocol.legacy.LegacyCodec` for winerp 1.x clients), so the
router never cares which dialect a connection speaks.
"""

from __future__ import annotations

from typing import Protocol, Union

from .. import errors
from .frames import FRAME_ENCODER, ErrorCode, Frame, decode_message

__all__ = ["Codec", "NativeCodec", "Undeliverable", "Message"]

Message = Union[bytes, str]


class Undeliverable(Exception):
    """A codec cannot express a frame in its dialect (e.g. bytes for a JSON peer)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# The bare encoder: the router encodes every frame it forwards through a codec.
_encode_frame = FRAME_ENCODER.encode


class Codec(Protocol):
    """Translates between one connection's wire messages and native frames."""

    def decode(self, message: Message) -> list[Frame]:
        """Return the frames one wire message carries. Raises `errors.ProtocolError`."""

    def encode(self, frame: Frame) -> list[Message]:
        """Return the wire messages that carry ``frame``. Raises `Undeliverable`."""


class NativeCodec:
    """The native dialect: a binary websocket message carries one msgpack frame, or a batch of them."""

    def decode(self, message: Message) -> list[Frame]:
        """Decode one binary message. Raises `errors.ProtocolError` for anything else."""
        if not isinstance(message, bytes):
            raise errors.ProtocolError("the native dialect uses binary messages only")
        return decode_message(message)

    def encode(self, frame: Frame) -> list[Message]:
        """Encode ``frame`` as one binary message."""
        return [_encode_frame(frame)]
