"""Decoding a compressed answer in bounded steps, under a size limit and a deadline.

A few kilobytes of zstd can claim gigabytes, and decoding them all at once costs the
device that memory and seconds of CPU before any check runs. Here each step turns a small
piece of input into at most a few megabytes of output; after every step the running total
is held to the limit and the clock to the call's deadline, so a hostile answer costs at
most the limit (plus one step) and the time left.

zlib bounds a step's output itself (``max_length``). zstd cannot, so its input is fed in
pieces of :data:`_ZSTD_PIECE` bytes: a zstd block is at most 128 KiB decoded and at least
4 bytes encoded, so one piece decodes to at most ``_ZSTD_PIECE * 32768`` bytes.
"""

from __future__ import annotations

import time
import zlib

from edgeinfer.protocol import coding
from edgeinfer.protocol.errors import ProtocolError

__all__ = ["inflate"]

_STEP = 1 << 20  # bytes of output per zlib step
_ZSTD_PIECE = 256  # bytes of zstd input per step: at most 8 MiB of output


def _name(layer: str) -> str:
    name = layer.strip().lower()
    name = "gzip" if name == "x-gzip" else name
    if name not in coding.available():
        have = ", ".join(("identity", *coding.available()))
        raise coding.UnsupportedCoding(f"content coding {layer!r} is not supported; use {have}")
    return name


def inflate(body: bytes, content_coding: str | None, *, limit: int, deadline: float) -> bytes:
    """``body`` decoded per its ``Content-Encoding``, never past ``limit`` bytes.

    Raises :class:`ProtocolError` for a corrupt, truncated or too large body and
    :class:`TimeoutError` once ``time.perf_counter()`` passes ``deadline``.
    """
    if content_coding is None:
        return body
    layers = [c.strip() for c in content_coding.split(",") if c.strip()]
    for layer in reversed(layers):  # RFC 9110: codings are listed in the order applied
        if layer.lower() == "identity":
            continue
        name = _name(layer)
        body = (
            _zstd(body, limit, deadline) if name == "zstd" else _zlib(body, name, limit, deadline)
        )
    return body


class _Output:
    """The decoded pieces, held to the limit and the deadline after every step."""

    def __init__(self, limit: int, deadline: float) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.deadline = deadline

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            raise ProtocolError(
                f"the body decompresses to more than the limit of {self.limit} bytes"
            )
        if data:
            self.parts.append(data)
        if time.perf_counter() > self.deadline:
            raise TimeoutError(f"still decompressing the body at {self.size} bytes")

    def result(self) -> bytes:
        return b"".join(self.parts)


def _zstd(body: bytes, limit: int, deadline: float) -> bytes:
    import zstandard as zstd  # listed in coding.available(), so importable

    out = _Output(limit, deadline)
    view = memoryview(body)
    pos = 0
    try:
        while True:  # one frame per pass (a body may hold several)
            dobj = zstd.ZstdDecompressor().decompressobj()
            while not dobj.eof:
                if pos >= len(view):
                    raise ProtocolError("the zstd body is truncated: its frame does not end")
                piece = view[pos : pos + _ZSTD_PIECE]
                pos += len(piece)
                out.add(dobj.decompress(piece))
            pos -= len(dobj.unused_data)
            if pos >= len(view):
                return out.result()
    except zstd.ZstdError as exc:
        raise ProtocolError(f"the body is not valid zstd data ({exc})") from None


def _zlib(body: bytes, name: str, limit: int, deadline: float) -> bytes:
    wbits = 31 if name == "gzip" else 15  # gzip wrapper, or the zlib format (RFC 1950)
    try:
        return _zlib_steps(body, wbits, limit, deadline)
    except zlib.error as exc:
        if name == "deflate":  # some servers send raw deflate without the zlib header
            try:
                return _zlib_steps(body, -15, limit, deadline)
            except zlib.error:
                pass
        raise ProtocolError(f"the body is not valid {name} data: {exc}") from None


def _zlib_steps(body: bytes, wbits: int, limit: int, deadline: float) -> bytes:
    d = zlib.decompressobj(wbits)
    out = _Output(limit, deadline)
    data = body
    while not d.eof:
        chunk = d.decompress(data, _STEP)
        data = d.unconsumed_tail
        out.add(chunk)
        if not chunk and not data:
            raise ProtocolError("the body is truncated: its stream does not end")
    return out.result()
