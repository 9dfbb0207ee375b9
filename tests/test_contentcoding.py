"""Tests for gateway.contentcoding: decode with a cap, bombs, stacked codings, negotiation."""

from __future__ import annotations

import gzip
import time
import tracemalloc
import zlib
from collections.abc import Callable

import brotli
import pytest

from gateway.contentcoding import (
    MAX_CODINGS,
    ContentCodingError,
    choose_encoding,
    decode_content,
    encode_content,
)

MB = 1 << 20
BODY = (
    '{"data":[' + ",".join(f'{{"id":{i},"name":"张三{i}"}}' for i in range(2000)) + "]}"
).encode()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zlib_deflate(data: bytes) -> bytes:
    return zlib.compress(data)


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def br(data: bytes) -> bytes:
    out: bytes = brotli.compress(data)
    return out


def reason(body: bytes, coding: str | None, max_size: int = 4 * MB) -> str:
    with pytest.raises(ContentCodingError) as info:
        decode_content(body, coding, max_size=max_size)
    return info.value.reason


def run_bounded(fn: Callable[[], object]) -> tuple[float, int]:
    """Seconds taken and peak bytes allocated while fn runs."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        fn()
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return elapsed, peak


# ---------------------------------------------------------------- decoding


@pytest.mark.parametrize("header", [None, "", "identity", " Identity ", ",", "identity, ,"])
def test_identity(header: str | None) -> None:
    assert decode_content(BODY, header, max_size=len(BODY)) == BODY


def test_identity_over_the_cap_is_too_large() -> None:
    assert reason(BODY, None, max_size=len(BODY) - 1) == "too_large"


@pytest.mark.parametrize(
    ("header", "encoder"),
    [
        ("gzip", gz),
        ("x-gzip", gz),
        ("GZip", gz),
        ("  gzip\t", gz),
        ("deflate", zlib_deflate),
        ("deflate", raw_deflate),
        ("br", br),
        ("BR", br),
    ],
)
def test_single_codings(header: str, encoder: Callable[[bytes], bytes]) -> None:
    assert decode_content(encoder(BODY), header, max_size=len(BODY)) == BODY


def test_deflate_raw_and_zlib_wrapped_both_decode() -> None:
    wrapped, raw = zlib_deflate(BODY), raw_deflate(BODY)
    assert wrapped[:2] != raw[:2]
    assert decode_content(wrapped, "deflate", max_size=MB) == BODY
    assert decode_content(raw, "deflate", max_size=MB) == BODY


def test_stacked_codings_are_undone_in_reverse_order() -> None:
    # "gzip, br": gzip was applied first, then br.
    assert decode_content(br(gz(BODY)), "gzip, br", max_size=MB) == BODY
    assert decode_content(gz(br(BODY)), "br,gzip", max_size=MB) == BODY
    assert decode_content(gz(raw_deflate(BODY)), "deflate , identity, gzip", max_size=MB) == BODY
    assert reason(br(gz(BODY)), "br, gzip") == "bad_encoding"  # order matters


def test_multi_member_gzip_is_decoded_whole() -> None:
    half = len(BODY) // 2
    body = gz(BODY[:half]) + gz(BODY[half:]) + gz(b"")
    assert decode_content(body, "gzip", max_size=MB) == BODY
    assert gzip.decompress(body) == BODY  # what a client would see
    assert reason(body, "gzip", max_size=len(BODY) - 1) == "decompression_bomb"


def test_empty_body_with_identity_is_empty() -> None:
    assert decode_content(b"", None, max_size=10) == b""


def test_large_output_exactly_at_the_cap_passes() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, partly compressible
    for header, encoder in (("gzip", gz), ("deflate", zlib_deflate), ("br", br)):
        assert decode_content(encoder(data), header, max_size=len(data)) == data
        assert reason(encoder(data), header, max_size=len(data) - 1) == "decompression_bomb"


# ---------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    "header",
    ["compress", "x-compress", "zstd", "gzip;q=1", "gzip br", "identity, snappy", "gzip, zstd"],
)
def test_unsupported_encoding(header: str) -> None:
    assert reason(gz(BODY), header) == "unsupported_encoding"


def test_too_many_stacked_codings() -> None:
    body = BODY
    for _ in range(MAX_CODINGS + 1):
        body = gz(body)
    assert reason(body, ", ".join(["gzip"] * (MAX_CODINGS + 1))) == "unsupported_encoding"
    body = BODY
    for _ in range(MAX_CODINGS):
        body = gz(body)
    assert decode_content(body, ", ".join(["gzip"] * MAX_CODINGS), max_size=MB) == BODY


@pytest.mark.parametrize(
    ("header", "body"),
    [
        ("gzip", gz(BODY)[:-10]),  # truncated: trailer missing
        ("gzip", gz(BODY)[: len(gz(BODY)) // 2]),  # truncated mid-stream
        ("gzip", gz(BODY)[:5]),  # truncated header
        ("gzip", b""),  # no stream at all
        ("gzip", gz(BODY) + b"garbage"),  # trailing garbage
        ("gzip", gz(BODY) + b"\x00" * 8),  # zero padding is not a member
        ("gzip", gz(BODY) + b"\x1f\x8b"),  # a second member that never comes
        ("gzip", gz(BODY)[:-8] + b"\x00\x00\x00\x00" + gz(BODY)[-4:]),  # bad CRC
        ("gzip", gz(BODY)[:-4] + b"\x00\x00\x00\x00"),  # bad length
        ("gzip", zlib_deflate(BODY)),  # deflate is not gzip
        ("gzip", b"this is not compressed at all"),
        ("deflate", zlib_deflate(BODY)[:-4]),  # adler32 missing
        ("deflate", zlib_deflate(BODY)[:100]),
        ("deflate", raw_deflate(BODY)[:100]),
        ("deflate", zlib_deflate(BODY) + b"x"),
        ("deflate", raw_deflate(BODY) + b"x"),
        ("deflate", zlib_deflate(BODY)[:-1] + bytes([zlib_deflate(BODY)[-1] ^ 1])),
        ("deflate", b""),
        ("br", br(BODY)[:-3]),
        ("br", br(BODY) + b"x"),
        ("br", br(BODY) + br(BODY)),  # brotli has no members
        ("br", b"not brotli"),
        ("br", b""),
        ("gzip, br", br(b"not gzip")),
    ],
)
def test_bad_encoding(header: str, body: bytes) -> None:
    assert reason(body, header) == "bad_encoding"


def test_corrupt_stream_in_the_middle() -> None:
    good = gz(BODY)
    corrupt = good[:50] + bytes(b ^ 0x55 for b in good[50:80]) + good[80:]
    assert reason(corrupt, "gzip") == "bad_encoding"


# ---------------------------------------------------------------- bombs


def _gzip_bomb(gigabytes: int) -> bytes:
    """A gzip stream of ``gigabytes`` GiB of zeros, built without ever holding them.

    After a full flush deflate starts afresh, so one compressed MiB of zeros can
    be repeated. The stream has no end: a decoder that stops at its cap never
    gets there, and one that does not would run out of memory first.
    """
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    header = c.compress(b"")
    block = c.compress(b"\x00" * MB) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(b"\x00" * MB) + c.flush(zlib.Z_FULL_FLUSH) == block
    return header + block * (gigabytes * 1024)


def test_10gb_gzip_bomb_is_stopped_fast_with_little_memory() -> None:
    bomb = _gzip_bomb(10)
    assert len(bomb) < 12 * MB
    elapsed, peak = run_bounded(lambda: reason(bomb, "gzip", max_size=MB))
    assert reason(bomb, "gzip", max_size=MB) == "decompression_bomb"
    assert elapsed < 1.0
    assert peak < 3 * MB


def _zeros_compressed(
    encoder: Callable[[], tuple[Callable[[bytes], bytes], Callable[[], bytes]]], megabytes: int
) -> bytes:
    feed, finish = encoder()
    zeros = b"\x00" * MB
    return b"".join(feed(zeros) for _ in range(megabytes)) + finish()


def _gzip_encoder() -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return c.compress, c.flush


def _zlib_encoder() -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    c = zlib.compressobj(9)
    return c.compress, c.flush


def _brotli_encoder() -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    c = brotli.Compressor(quality=5)
    return c.process, c.finish


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """Complete, valid streams of 200 MiB of zeros (small: tens to hundreds of KB)."""
    return {
        "gzip": _zeros_compressed(_gzip_encoder, 200),
        "deflate": _zeros_compressed(_zlib_encoder, 200),
        "br": _zeros_compressed(_brotli_encoder, 200),
    }


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br"])
def test_200mb_bombs_are_stopped_at_the_cap(bombs: dict[str, bytes], coding: str) -> None:
    bomb = bombs[coding]
    assert len(bomb) < 300 * 1024
    elapsed, peak = run_bounded(lambda: reason(bomb, coding, max_size=MB))
    assert elapsed < 1.0
    assert peak < 3 * MB


def test_bomb_inside_stacked_codings(bombs: dict[str, bytes]) -> None:
    # The outer layer is small; the inner one explodes.
    outer = br(bombs["gzip"])
    elapsed, peak = run_bounded(lambda: reason(outer, "gzip, br", max_size=MB))
    assert reason(outer, "gzip, br", max_size=MB) == "decompression_bomb"
    assert elapsed < 1.0
    assert peak < 4 * MB


def test_bomb_of_many_gzip_members() -> None:
    member = gz(b"\x00" * (64 * 1024))
    bomb = member * 64  # 4 MiB in members that are each under the cap
    assert reason(bomb, "gzip", max_size=MB) == "decompression_bomb"


# ---------------------------------------------------------------- encoding


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "x-gzip", " GZIP "])
def test_encode_content_round_trips(coding: str) -> None:
    encoded = encode_content(BODY, coding)
    assert len(encoded) < len(BODY) // 3
    assert decode_content(encoded, coding, max_size=MB) == BODY


def test_encode_content_is_standard_and_deterministic() -> None:
    assert gzip.decompress(encode_content(BODY, "gzip")) == BODY
    assert zlib.decompress(encode_content(BODY, "deflate")) == BODY  # zlib-wrapped
    assert brotli.decompress(encode_content(BODY, "br")) == BODY
    assert encode_content(BODY, "gzip") == encode_content(BODY, "gzip")  # no timestamp
    assert encode_content(BODY, "identity") == BODY


def test_encode_content_unknown_coding() -> None:
    with pytest.raises(ContentCodingError) as info:
        encode_content(BODY, "zstd")
    assert info.value.reason == "unsupported_encoding"


def test_error_messages_never_contain_the_body() -> None:
    secret = b"110101199003074518"
    for body, header in ((gz(secret)[:-3], "gzip"), (secret, "br"), (secret, "deflate")):
        with pytest.raises(ContentCodingError) as info:
            decode_content(body, header, max_size=MB)
        assert secret.decode() not in str(info.value)


# ---------------------------------------------------------------- negotiation


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("identity", None),
        ("gzip", "gzip"),
        ("GZIP", "gzip"),
        ("x-gzip", "gzip"),
        ("br", "br"),
        ("gzip, deflate, br", "br"),
        ("gzip, deflate, br, zstd", "br"),
        ("deflate", None),  # we only offer gzip and br
        ("gzip;q=1, br;q=0.5", "gzip"),
        ("gzip;q=0.5, br;q=0.5", "br"),
        ("gzip ; q=0.8 , br ; Q=0.9", "br"),
        ("br;q=0, gzip", "gzip"),
        ("br;q=0, gzip;q=0", None),
        ("gzip;q=0.000", None),
        ("gzip;q=0.001", "gzip"),
        ("*", "br"),
        ("*;q=0.5, br;q=0", "gzip"),
        ("*;q=0", None),
        ("*;q=0, identity", None),
        ("gzip, identity;q=0", "gzip"),
        ("identity;q=1, gzip;q=0.5", None),  # the client prefers plain
        ("identity;q=0.5, gzip", "gzip"),
        ("gzip;q=0.5", "gzip"),  # implicit identity does not outrank a listed coding
        ("br;q=1.5", None),  # malformed q-values grant nothing
        ("br;q=abc", None),
        ("br;q=0.1234", None),
        ("br;q=", None),
        ("br;level=5", None),
        ("br;q=٠.٥", None),  # non-ASCII digits
        ("gzip;q=0, gzip;q=1", "gzip"),
        (",,gzip,,", "gzip"),
    ],
)
def test_choose_encoding(accept: str | None, chosen: str | None) -> None:
    assert choose_encoding(accept) == chosen
