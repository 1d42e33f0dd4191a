"""Websocket framing (RFC 6455), sans-IO: build frames, and cut a byte stream into messages.

Rules of this module: no I/O, no threads, no clock. The hub and the client both frame their
messages here; the opening handshake stays with websocket-client (client side) and
`winerp.handshake` (hub side).

Masking is the hot spot of a pure-Python websocket: a big-int XOR costs about 150 µs per
64 KiB. When the four bytes of a masking key are equal, masking is one ``bytes.translate``
(C speed, no big-int conversions), so this module's clients pick such keys (a random byte,
four times); keys of any other shape, e.g. from winerp 1.x clients, take the big-int path.
"""

from __future__ import annotations

import random
import struct

__all__ = [
    "OP_CONTINUATION",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "FrameError",
    "FrameReader",
    "server_frame",
    "server_header",
    "client_frame",
    "close_payload",
    "parse_close",
    "unmask",
]

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# Close codes used here (RFC 6455 section 7.4.1).
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009

_LONGEST_CONTROL = 125
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_XOR_TABLES: dict[int, bytes] = {}


class FrameError(Exception):
    """The byte stream breaks the websocket framing rules; close with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


def _xor_table(byte: int) -> bytes:
    table = _XOR_TABLES.get(byte)
    if table is None:
        table = _XOR_TABLES[byte] = bytes(value ^ byte for value in range(256))
    return table


def unmask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key`` (masking and unmasking are the same)."""
    if key[0] == key[1] == key[2] == key[3]:
        return payload.translate(_xor_table(key[0])) if key[0] else payload
    size = len(payload)
    whole, rest = divmod(size, 4)
    stream = int.from_bytes(key * whole + key[:rest], "little")
    return (int.from_bytes(payload, "little") ^ stream).to_bytes(size, "little")


def _header(first: int, size: int, mask_bit: int) -> bytes:
    if size < 126:
        return bytes((first, mask_bit | size))
    if size < 65536:
        return bytes((first, mask_bit | 126)) + _U16.pack(size)
    return bytes((first, mask_bit | 127)) + _U64.pack(size)


def server_header(opcode: int, size: int) -> bytes:
    """The header of one final, unmasked frame (hub to client) of ``size`` payload bytes."""
    return _header(0x80 | opcode, size, 0)


def server_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame (hub to client)."""
    return _header(0x80 | opcode, len(payload), 0) + payload


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked frame (client to hub), with a fresh key of four equal bytes."""
    byte = random.getrandbits(8) or 1  # 0 would leave the payload as it is
    size = len(payload)
    table = _XOR_TABLES.get(byte) or _xor_table(byte)
    if size < 126:
        return bytes((0x80 | opcode, 0x80 | size, byte, byte, byte, byte)) + payload.translate(table)
    return _header(0x80 | opcode, size, 0x80) + bytes((byte, byte, byte, byte)) + payload.translate(table)


def close_payload(code: int, reason: str) -> bytes:
    """The body of a close frame: the code, then the reason cut to fit a control frame."""
    encoded = reason.encode()[: _LONGEST_CONTROL - 2].decode("utf-8", "ignore").encode()
    return _U16.pack(code) + encoded


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """Split a close frame's body into its code (None if absent) and reason."""
    if len(payload) < 2:
        return None, ""
    return _U16.unpack_from(payload)[0], payload[2:].decode("utf-8", "replace")


def _check_close(payload: bytes) -> None:
    if not payload:
        return
    if len(payload) == 1:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "a close frame body of one byte")
    code = _U16.unpack_from(payload)[0]
    if not (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) and not 3000 <= code <= 4999:
        raise FrameError(CLOSE_PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(CLOSE_INVALID_DATA, "close reason is not valid UTF-8") from None


class FrameReader:
    """Turns the bytes read from one connection into whole messages, in order.

    ``feed`` returns ``(opcode, payload)`` pairs: data messages (`OP_TEXT`, `OP_BINARY`),
    reassembled if they came in fragments, and control frames (`OP_CLOSE`, `OP_PING`,
    `OP_PONG`) as they come. Text payloads are returned as bytes, not yet decoded.

    Args:
        masked: True at the hub (client frames must be masked), False at a client (hub
            frames must not be).
        max_size: Largest message accepted, in bytes; a bigger one raises `FrameError`
            (1009) as soon as its header arrives.
    """

    def __init__(self, *, masked: bool, max_size: int) -> None:
        self.masked = masked
        self.max_size = max_size
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = 0
        self._fragment_size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Take the bytes just read; return the messages they complete.

        Raises:
            FrameError: the stream breaks the framing rules or a message is too big.
        """
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._chunks)
            self._chunks = []
        elif len(data) > 2 and data[0] == 0x82 and self._fragments is None:
            # The common case, taken in a few steps: exactly one whole, final, binary frame
            # of under 64 KiB, masked as it must be.
            second = data[1]
            size = second & 0x7F
            head = 2 if size < 126 else 4
            if size == 126:
                size = _U16.unpack_from(data, 2)[0]
            if (
                size != 127
                and size <= self.max_size
                and (second >> 7) == self.masked
                and len(data) == head + 4 * self.masked + size
            ):
                if not self.masked:
                    return [(OP_BINARY, data[head:])]
                byte = data[head]
                if data[head + 1] == byte and data[head + 2] == byte and data[head + 3] == byte:
                    table = _XOR_TABLES.get(byte) or _xor_table(byte)
                    return [(OP_BINARY, data[head + 4 :].translate(table))]
                return [(OP_BINARY, unmask(data[head + 4 :], data[head : head + 4]))]
        messages: list[tuple[int, bytes]] = []
        position = 0
        end = len(data)
        need = 0
        while end - position >= 2:
            first = data[position]
            second = data[position + 1]
            size = second & 0x7F
            head = 2
            if size == 126:
                head = 4
                if end - position < head:
                    need = head
                    break
                size = _U16.unpack_from(data, position + 2)[0]
            elif size == 127:
                head = 10
                if end - position < head:
                    need = head
                    break
                size = _U64.unpack_from(data, position + 2)[0]
                if size >> 63:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "a 64-bit length must have its top bit clear")
            if size > self.max_size:
                raise FrameError(CLOSE_TOO_BIG, f"message of {size} bytes is over the limit of {self.max_size}")
            is_masked = second & 0x80
            if bool(is_masked) != self.masked:
                raise FrameError(
                    CLOSE_PROTOCOL_ERROR, "client frames must be masked" if self.masked else "hub frames must not be"
                )
            if is_masked:
                head += 4
            total = head + size
            if end - position < total:
                need = total
                break
            payload = data[position + head : position + total]
            if is_masked:
                payload = unmask(payload, data[position + head - 4 : position + head])
            position += total
            if first & 0x70:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
            opcode = first & 0x0F
            final = first & 0x80
            if opcode >= OP_CLOSE:
                if opcode > OP_PONG:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
                if not final or size > _LONGEST_CONTROL:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "control frames must be whole and at most 125 bytes")
                if opcode == OP_CLOSE:
                    _check_close(payload)
                messages.append((opcode, payload))
            elif opcode == OP_CONTINUATION:
                self._continue(payload, final, messages)
            elif opcode > OP_BINARY:
                raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            elif self._fragments is not None:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "a new message began inside a fragmented one")
            elif final:
                messages.append((opcode, payload))
            else:
                self._fragments = [payload]
                self._fragment_opcode = opcode
                self._fragment_size = size
        if position < end:
            rest = data[position:] if position else data
            self._chunks = [rest]
            self._have = len(rest)
            self._need = max(need, 2)
        return messages

    def _continue(self, payload: bytes, final: int, messages: list[tuple[int, bytes]]) -> None:
        if self._fragments is None:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "a continuation frame with no message to continue")
        self._fragment_size += len(payload)
        if self._fragment_size > self.max_size:
            raise FrameError(CLOSE_TOO_BIG, f"message over the limit of {self.max_size} bytes")
        self._fragments.append(payload)
        if final:
            messages.append((self._fragment_opcode, b"".join(self._fragments)))
            self._fragments = None
