"""HTTP content codings: round trips, bounded decoding, bad bodies, Accept-Encoding."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest
import zstandard

from edgeinfer.protocol import coding
from edgeinfer.protocol.errors import ProtocolError

BODY = np.random.default_rng(0).integers(0, 16, 50_000).astype(np.uint8).tobytes()


def test_all_three_codings_are_available_with_zstandard_installed() -> None:
    assert coding.available() == ("zstd", "gzip", "deflate")


@pytest.mark.parametrize("name", ["zstd", "gzip", "deflate"])
def test_round_trip_and_smaller(name: str) -> None:
    packed = coding.encode(BODY, name)
    assert len(packed) < len(BODY) * 0.7
    assert coding.decode(packed, name, limit=len(BODY)) == BODY


def test_other_encoders_output_is_read() -> None:
    """Bodies from the standard encoders, as other clients send them."""
    assert coding.decode(gzip.compress(BODY), "gzip", limit=1 << 20) == BODY
    assert coding.decode(gzip.compress(BODY), "x-gzip", limit=1 << 20) == BODY
    assert coding.decode(zlib.compress(BODY), "deflate", limit=1 << 20) == BODY
    raw = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert coding.decode(raw.compress(BODY) + raw.flush(), "deflate", limit=1 << 20) == BODY
    streamed = zstandard.ZstdCompressor(write_content_size=False).compress(BODY)
    assert coding.decode(streamed, "zstd", limit=1 << 20) == BODY


def test_identity_and_layers() -> None:
    assert coding.decode(BODY, None, limit=1) == BODY  # no coding: nothing to inflate
    assert coding.decode(BODY, "identity", limit=1 << 20) == BODY
    layered = coding.encode(coding.encode(BODY, "gzip"), "zstd")  # gzip first, then zstd
    assert coding.decode(layered, "gzip, zstd", limit=1 << 20) == BODY


@pytest.mark.parametrize("name", ["zstd", "gzip", "deflate"])
def test_a_bomb_stops_at_the_limit(name: str) -> None:
    bomb = coding.encode(b"\0" * (32 << 20), name)  # 32 MiB of zeros in at most 150 kB
    assert len(bomb) < 150 << 10
    with pytest.raises(ProtocolError, match="more than the limit of 1048576 bytes"):
        coding.decode(bomb, name, limit=1 << 20)


def test_a_zstd_bomb_without_a_declared_size_stops_at_the_limit() -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(b"\0" * (32 << 20))
    with pytest.raises(ProtocolError, match="limit of 1048576 bytes"):
        coding.decode(bomb, "zstd", limit=1 << 20)


@pytest.mark.parametrize("name", ["zstd", "gzip", "deflate"])
def test_truncated_and_garbage_bodies_are_protocol_errors(name: str) -> None:
    packed = coding.encode(BODY, name)
    with pytest.raises(ProtocolError, match=f"(?i)truncated|not valid {name}"):
        coding.decode(packed[: len(packed) // 2], name, limit=1 << 20)
    with pytest.raises(ProtocolError, match=f"not valid {name}"):
        coding.decode(b"this is not compressed at all", name, limit=1 << 20)


def test_an_unknown_coding_names_the_ones_that_work() -> None:
    with pytest.raises(coding.UnsupportedCoding, match="'br' is not supported.*zstd, gzip"):
        coding.decode(BODY, "br", limit=1 << 20)
    with pytest.raises(coding.UnsupportedCoding):
        coding.encode(BODY, "compress")


def test_worth_encoding() -> None:
    assert not coding.worth_encoding(coding.MIN_BYTES - 1)
    assert coding.worth_encoding(coding.MIN_BYTES)
    assert coding.worth_encoding(0, min_bytes=0)


@pytest.mark.parametrize(
    ("header", "want"),
    [
        (None, None),  # the client did not ask
        ("", None),
        ("identity", None),
        ("gzip", "gzip"),
        ("gzip, deflate, br, zstd", "zstd"),  # httpx's default: equal weights, zstd first
        ("gzip;q=1.0, zstd;q=0.5", "gzip"),
        ("zstd;q=0, gzip", "gzip"),
        ("*", "zstd"),
        ("*;q=0.5, zstd;q=0", "gzip"),
        ("br", None),  # nothing the server has
        ("gzip;q=0", None),
        ("gzip;q=abc", None),  # an unreadable weight is not a yes
        ("X-GZIP", "gzip"),
        ("identity;q=1, gzip;q=0.5", None),  # identity explicitly preferred
        ("gzip;q=0.5", "gzip"),  # identity unmentioned: no weight of its own
    ],
)
def test_negotiate(header: str | None, want: str | None) -> None:
    assert coding.negotiate(header) == want


def test_negotiate_only_what_is_offered() -> None:
    assert coding.negotiate("zstd, gzip", offered=("gzip",)) == "gzip"
    assert coding.negotiate("zstd", offered=("gzip", "deflate")) is None
