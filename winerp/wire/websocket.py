"""Websocket framing (RFC 6455), sans-IO: build frames, and cut a byte stream into messages.

Rules of this module: no I/O, no threads, no clock. The hub and the client both frame their
messages here; the opening handshake stays with websocket-client (client side) and
`winerp.wire.handshake` (hub side).

Every frame a client sends is masked with a fresh, unpredictable 32-bit key drawn from the
operating system's entropy source (RFC 6455, sections 5.3 and 10.3); keys are drawn 4 KiB
at a time, so a frame costs no system call. Masking is the hot spot of a pure-Python
websocket, so it is done in compiled code when the ``websockets`` package's C extension is
there (a dependency for this one function: about 40 times faster than pure Python at
64 KiB). Without it, masking is one big-int XOR for small payloads and, from 16 KiB on, one
per 8 KiB chunk, whose conversions stay in the CPU cache; keys of four equal bytes (as older
winerp clients sent) take one ``bytes.translate``. ``benchmarks/bench_mask.py`` has the
figures of each way.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import struct
from collections.abc import Callable, Iterator

from .close import CloseCode

__all__ = [
    "OP_CONTINUATION",
    "OP_TEXT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_PING",
    "OP_PONG",
    "FRAGMENT_BYTES",
    "MIN_FRAGMENTS",
    "FrameError",
    "FrameReader",
    "server_frame",
    "server_header",
    "client_frame",
    "close_payload",
    "parse_close",
    "masking_key",
    "unmask",
    "python_unmask",
]

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

# Close codes used here (RFC 6455 section 7.4.1).

#: A fragmented message may come in at most one fragment per this many bytes of the size
#: limit (and at least `MIN_FRAGMENTS`): each fragment costs memory and work beyond its
#: payload, so tiny or empty fragments must not make a message unbounded.
FRAGMENT_BYTES = 64
#: The fewest fragments a message may always use, whatever the size limit.
MIN_FRAGMENTS = 16

_LONGEST_CONTROL = 125
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_XOR_TABLES: dict[int, bytes] = {}
# From this size on, masking is a big-int XOR per _CHUNK bytes rather than one for the whole.
_CHUNKED_FROM = 16 * 1024
_CHUNK = 8 * 1024
_KEY_BATCH = 4096
# First bytes of a whole, final text or binary frame with no reserved bit: the usual frame.
_PLAIN_DATA = (0x81, 0x82)
_DATA_OR_CONTROL = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))


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


def _fresh_keys() -> tuple[bytes, Iterator[int]]:
    return os.urandom(_KEY_BATCH), iter(range(0, _KEY_BATCH, 4))


# The batch and its offsets live in one tuple, replaced whole: threads that mask at once
# each take a distinct offset (a range iterator hands each out once) of a consistent batch.
_keys = _fresh_keys()


def masking_key() -> bytes:
    """A fresh 4-byte masking key from the operating system's entropy source."""
    global _keys
    batch, offsets = _keys
    for offset in offsets:
        return batch[offset : offset + 4]
    batch, offsets = _keys = _fresh_keys()
    offset = next(offsets)
    return batch[offset : offset + 4]


def python_unmask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte masking ``key`` in pure Python (see `unmask`)."""
    first = key[0]
    if first == key[1] == key[2] == key[3]:
        return payload.translate(_xor_table(first)) if first else payload
    size = len(payload)
    if size >= _CHUNKED_FROM:
        return _unmask_chunked(payload, key)
    whole, rest = divmod(size, 4)
    stream = int.from_bytes(key * whole + key[:rest], "little")
    return (int.from_bytes(payload, "little") ^ stream).to_bytes(size, "little")


def _unmask_chunked(payload: bytes, key: bytes) -> bytes:
    # One big-int XOR per 8 KiB: the conversions stay in the CPU cache, where one conversion
    # of a whole large payload does not. A chunk is a multiple of 4 bytes, so the key lines up.
    stream = int.from_bytes(key * (_CHUNK // 4), "little")
    view = memoryview(payload)
    size = len(payload)
    whole = size - size % _CHUNK
    parts = [
        (int.from_bytes(view[start : start + _CHUNK], "little") ^ stream).to_bytes(_CHUNK, "little")
        for start in range(0, whole, _CHUNK)
    ]
    if whole < size:
        parts.append(python_unmask(bytes(view[whole:]), key))
    return b"".join(parts)


def _compiled_unmask() -> Callable[[bytes, bytes], bytes] | None:
    """The ``websockets`` package's compiled ``apply_mask``, or None where it is not built.

    The extension module is loaded by itself: importing the ``websockets`` package would also
    import ``importlib.metadata`` and the rest of its ``__init__`` (about 4.5 MB of memory and
    20 ms in a process that uses none of it).
    """
    spec = importlib.util.find_spec("websockets")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "speedups" + suffix)
            if os.path.exists(path):
                loader = importlib.machinery.ExtensionFileLoader("websockets.speedups", path)
                spec_of_module = importlib.machinery.ModuleSpec(loader.name, loader, origin=path)
                module = importlib.util.module_from_spec(spec_of_module)
                loader.exec_module(module)
                apply_mask: Callable[[bytes, bytes], bytes] = module.apply_mask
                return apply_mask
    return None  # no wheel for this platform, or an interpreter without C extensions


#: XOR ``payload`` with the 4-byte masking ``key`` (masking and unmasking are the same): in
#: compiled code when the ``websockets`` C extension is importable, else `python_unmask`.
unmask: Callable[[bytes, bytes], bytes] = _compiled_unmask() or python_unmask


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
    """One final, masked frame (client to hub), with a fresh random key."""
    key = masking_key()
    size = len(payload)
    if size < 126:
        return bytes((0x80 | opcode, 0x80 | size)) + key + unmask(payload, key)
    return _header(0x80 | opcode, size, 0x80) + key + unmask(payload, key)


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
        raise FrameError(CloseCode.PROTOCOL_ERROR, "a close frame body of one byte")
    code = _U16.unpack_from(payload)[0]
    if not (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) and not 3000 <= code <= 4999:
        raise FrameError(CloseCode.PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(CloseCode.INVALID_DATA, "close reason is not valid UTF-8") from None


def _extended_length(data: bytes, position: int, end: int, code: int) -> tuple[int, int]:
    """The header size and payload length of a frame whose 7-bit length ``code`` is 126 or 127.

    The length is -1 when the bytes that hold it are not all in yet.
    """
    head = 4 if code == 126 else 10
    if end - position < head:
        return head, -1
    return head, _read_extended_length(data, position, code)


def _read_extended_length(data: bytes, position: int, code: int) -> int:
    """The payload length announced in 16 or 64 bits after the 7-bit ``code`` 126 or 127."""
    if code == 126:
        size: int = _U16.unpack_from(data, position + 2)[0]
        if size < 126:
            raise FrameError(CloseCode.PROTOCOL_ERROR, f"a length of {size} must be sent in 7 bits")
        return size
    size = _U64.unpack_from(data, position + 2)[0]
    if size >> 63:
        raise FrameError(CloseCode.PROTOCOL_ERROR, "a 64-bit length must have its top bit clear")
    if size < 65536:
        raise FrameError(CloseCode.PROTOCOL_ERROR, f"a length of {size} must be sent in 7 or 16 bits")
    return size


class FrameReader:
    """Turns the bytes read from one connection into whole messages, in order.

    ``feed`` returns ``(opcode, payload)`` pairs: data messages (`OP_TEXT`, `OP_BINARY`),
    reassembled if they came in fragments, and control frames (`OP_CLOSE`, `OP_PING`,
    `OP_PONG`) as they come. Text payloads are returned as bytes, not yet decoded.

    Each rule is checked as soon as the bytes it depends on are in: reserved bits, opcode,
    mask bit and a control frame's length with the first two bytes of a frame, the length
    against the limit with the extended length, before any payload is waited for.

    When one read holds good frames and then a bad one, ``feed`` returns the messages of
    the good frames and keeps the error in `failure`: the caller handles those messages,
    then fails the connection with ``failure.code``. A read whose first frame is bad raises
    at once. After an error, every later ``feed`` raises it again; after a close frame,
    every later byte is ignored (nothing may follow a close frame).

    Args:
        masked: True at the hub (client frames must be masked), False at a client (hub
            frames must not be).
        max_size: Largest message accepted, in bytes; a bigger one raises `FrameError`
            (1009) as soon as its header arrives. A fragmented message may also come in at
            most ``max(MIN_FRAGMENTS, max_size // FRAGMENT_BYTES)`` fragments (1009 too).
    """

    def __init__(self, *, masked: bool, max_size: int) -> None:
        self.masked = masked
        self.max_size = max_size
        #: The framing error that ends this stream, once one was found.
        self.failure: FrameError | None = None
        #: True once a close frame was read: what follows it is ignored.
        self.closed = False
        self._done = False
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = 0
        self._fragment_size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Take the bytes just read; return the messages they complete.

        Raises:
            FrameError: the stream breaks the framing rules or a message is too big, and
                no message came before the bad frame in this read (else see `failure`).
        """
        if self._done:
            if self.failure is not None:
                raise self.failure
            return []
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._chunks)
            self._chunks = []
        elif len(data) >= 4 and data[0] == 0x82 and self._fragments is None:
            whole = self._one_binary_frame(data)
            if whole is not None:
                return [(OP_BINARY, whole)]
        messages: list[tuple[int, bytes]] = []
        try:
            self._parse(data, messages)
        except FrameError as exc:
            self.failure = exc
            self._done = True
            self._chunks = []
            self._fragments = None
            if not messages:
                raise
        return messages

    def _one_binary_frame(self, data: bytes) -> bytes | None:
        """The payload if ``data`` is exactly one whole, final binary frame of under 64 KiB, else None.

        The common case, taken in a few steps (``data`` starts with 0x82 and has 4 bytes or
        more); anything unusual takes the full path, which checks every rule.
        """
        second = data[1]
        size = second & 0x7F
        head = 2
        if size == 126:
            size = _U16.unpack_from(data, 2)[0]
            if size < 126:
                return None  # a non-minimal length: the full path refuses it
            head = 4
        elif size == 127:
            return None  # 64-bit lengths take the full path
        masked = self.masked
        if size > self.max_size or (second >> 7) != masked or len(data) != head + 4 * masked + size:
            return None
        if not masked:
            return data[head:]
        return unmask(data[head + 4 :], data[head : head + 4])

    def _parse(self, data: bytes, messages: list[tuple[int, bytes]]) -> None:
        position = 0
        end = len(data)
        need = 0
        masked = self.masked
        mask_bit = 0x80 if masked else 0
        mask_size = 4 if masked else 0
        while end - position >= 2:
            first = data[position]
            second = data[position + 1]
            if not (first in _PLAIN_DATA and second & 0x80 == mask_bit and self._fragments is None):
                self._check_header(first, second)
            opcode = first & 0x0F
            size = second & 0x7F
            head = 2
            if size > 125:
                head, size = _extended_length(data, position, end, size)
                if size < 0:
                    need = head
                    break
            if size > self.max_size or opcode == OP_CONTINUATION:
                self._check_size(opcode, size)
            head += mask_size
            total = head + size
            if end - position < total:
                need = total
                break
            payload = data[position + head : position + total]
            if masked:
                payload = unmask(payload, data[position + head - 4 : position + head])
            position += total
            if self._take(first, opcode, payload, messages):
                return  # a close frame: nothing may follow it, the rest is ignored
        if position < end:
            self._keep(data, position, need)

    def _keep(self, data: bytes, position: int, need: int) -> None:
        """Hold the start of a frame not all in yet (from ``position``), until ``need`` bytes of it are."""
        rest = data[position:] if position else data
        self._chunks = [rest]
        self._have = len(rest)
        self._need = max(need, 2)

    def _check_size(self, opcode: int, size: int) -> None:
        """Refuse a frame that makes its message bigger than the limit (1009)."""
        if opcode == OP_CONTINUATION:
            size += self._fragment_size
        if size > self.max_size:
            raise FrameError(CloseCode.TOO_BIG, f"message over the limit of {self.max_size} bytes")

    def _take(self, first: int, opcode: int, payload: bytes, messages: list[tuple[int, bytes]]) -> bool:
        """Add what one checked frame completes to ``messages``; True for a close frame."""
        if first & 0x80 and opcode <= OP_BINARY and opcode:
            messages.append((opcode, payload))
        elif opcode >= OP_CLOSE:
            if opcode == OP_CLOSE:
                _check_close(payload)
                messages.append((opcode, payload))
                self.closed = self._done = True
                return True
            messages.append((opcode, payload))
        elif opcode == OP_CONTINUATION:
            self._continue(payload, first & 0x80, messages)
        else:
            self._fragments = [payload]
            self._fragment_opcode = opcode
            self._fragment_size = len(payload)
        return False

    def _check_header(self, first: int, second: int) -> None:
        """Check what the first two bytes of a frame decide; raise `FrameError` if they break a rule."""
        if first & 0x70:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
        opcode = first & 0x0F
        if opcode not in _DATA_OR_CONTROL:
            raise FrameError(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if bool(second & 0x80) != self.masked:
            raise FrameError(
                CloseCode.PROTOCOL_ERROR, "client frames must be masked" if self.masked else "hub frames must not be"
            )
        if opcode >= OP_CLOSE:
            if not first & 0x80 or (second & 0x7F) > _LONGEST_CONTROL:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "control frames must be whole and at most 125 bytes")
        elif opcode != OP_CONTINUATION:
            if self._fragments is not None:
                raise FrameError(CloseCode.PROTOCOL_ERROR, "a new message began inside a fragmented one")
        elif self._fragments is None:
            raise FrameError(CloseCode.PROTOCOL_ERROR, "a continuation frame with no message to continue")
        elif len(self._fragments) >= max(MIN_FRAGMENTS, self.max_size // FRAGMENT_BYTES):
            raise FrameError(CloseCode.TOO_BIG, f"message in more than {len(self._fragments)} fragments")

    def _continue(self, payload: bytes, final: int, messages: list[tuple[int, bytes]]) -> None:
        assert self._fragments is not None  # checked with the frame's header
        self._fragment_size += len(payload)
        self._fragments.append(payload)
        if final:
            messages.append((self._fragment_opcode, b"".join(self._fragments)))
            self._fragments = None
            self._fragment_size = 0
