"""Content codings (RFC 9110 §8.4): undo them with a size cap, apply them, negotiate.

Rules
=====

``decode_content(body, content_encoding, max_size=...)``:

* The header is a comma-separated list, case-insensitive, whitespace around
  items ignored, empty items ignored (RFC 9110 §5.6.1), ``identity`` items
  skipped. Codings are listed in the order they were applied, so they are
  undone from the last to the first (``gzip, br``: brotli first, then gzip).
* Supported: ``gzip`` (and ``x-gzip``), ``deflate`` (zlib-wrapped, as RFC 9110
  says, *and* raw deflate, which real servers send too; the two-byte zlib
  header decides), ``br``. Anything else, parameters included, and more than
  ``MAX_CODINGS`` stacked codings -> ``unsupported_encoding``.
* A corrupt or truncated stream, a bad checksum, or bytes after the end of the
  stream -> ``bad_encoding``. An empty body with a coding is a truncated stream.
* Multi-member gzip (RFC 1952 §2.2: members simply concatenated, as pigz and
  appending writers produce) is supported: every member is decoded, because a
  client would decode them all too. Anything after a member that is not another
  member (zero padding included) -> ``bad_encoding``.
* The output of every step is capped at ``max_size`` bytes -> over it,
  ``decompression_bomb``. Decompression is incremental with an output bound per
  call, so a 10 KB gzip that expands to 10 GB stops after about ``max_size``
  bytes of output, having allocated little more than that. A body without a
  coding larger than ``max_size`` -> ``too_large``.

``encode_content(body, coding)`` applies ``gzip``, ``deflate`` (zlib-wrapped) or
``br``; output is deterministic (gzip header mtime 0).

``choose_encoding(accept_encoding)`` picks ``"br"`` or ``"gzip"`` from a
request's ``Accept-Encoding`` (q-values honoured, ``q=0`` means not acceptable,
``*`` stands for codings not listed, ties go to ``br``), or ``None`` for a plain
response: no header, an empty one, nothing acceptable, or ``identity`` listed
with a higher q-value than any coding we offer. When even identity is refused
(``identity;q=0`` with no acceptable coding) the response is still sent plain:
a strict server would answer 406, but a masked body in the clear is what the
client can always read.

Errors are :class:`ContentCodingError` with a short ``reason`` (a metric label);
messages never contain body bytes.

Theory of operation
===================

Each coding has a streaming decoder fed the body in ``_CHUNK`` slices through a
:class:`_Sink` that counts output. zlib's ``decompress(data, max_length)`` never
returns more than ``max_length`` bytes and keeps the unread input in
``unconsumed_tail``; brotli's ``process(data, output_buffer_limit=...)`` may
overshoot its limit by one buffer growth, so it gets at most ``_STEP`` per call.
Either way a bomb is noticed within a bounded amount of output.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Final

import brotli

__all__ = [
    "MAX_CODINGS",
    "ContentCodingError",
    "choose_encoding",
    "decode_content",
    "encode_content",
]

# Reasons (metric labels).
UNSUPPORTED: Final = "unsupported_encoding"
BAD_ENCODING: Final = "bad_encoding"
BOMB: Final = "decompression_bomb"
TOO_LARGE: Final = "too_large"

_MESSAGES: Final = {
    UNSUPPORTED: "unsupported content coding",
    BAD_ENCODING: "corrupt or truncated content coding",
    BOMB: "decoded body exceeds the size limit",
    TOO_LARGE: "body exceeds the size limit",
}

MAX_CODINGS: Final = 3  # stacked codings beyond this are refused (each costs a pass)
_CHUNK: Final = 64 * 1024  # input fed per call: bounds the unconsumed-tail copies
_STEP: Final = 256 * 1024  # brotli output per call (it may overshoot by a buffer growth)
_GZIP_MAGIC: Final = b"\x1f\x8b"
# Re-encoding runs on every masked response, so speed wins. On the 1.1 MB
# customer-record test document: gzip -1 4.9 ms -> 215 KB (-6: 14 ms, 179 KB;
# -9: 38 ms, 172 KB); brotli q1 2.4 ms -> 179 KB (q4: 7 ms, 164 KB). Hence
# choose_encoding prefers br.
_GZIP_LEVEL: Final = 1
_DEFLATE_LEVEL: Final = 1
_BROTLI_QUALITY: Final = 1


class ContentCodingError(ValueError):
    """A content coding could not be undone (or applied) safely."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(_MESSAGES.get(reason, reason))


class _Sink:
    """Collects decoded output and refuses to hold more than ``max_size`` bytes."""

    __slots__ = ("chunks", "max_size", "size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = 0
        self.chunks: list[bytes] = []

    def room(self) -> int:
        """Output to ask for next: one byte more than fits, so overflow is seen."""
        return self.max_size - self.size + 1

    def add(self, piece: bytes) -> None:
        if piece:
            self.size += len(piece)
            if self.size > self.max_size:
                raise ContentCodingError(BOMB)
            self.chunks.append(piece)

    def result(self) -> bytes:
        return b"".join(self.chunks)


def _inflate_member(body: bytes, pos: int, wbits: int, sink: _Sink) -> int:
    """Decode one zlib/gzip/raw-deflate stream starting at ``pos``; return where it ended."""
    view = memoryview(body)
    end = len(body)
    d = zlib.decompressobj(wbits)
    data: bytes | memoryview = b""
    try:
        while not d.eof:
            if d.unconsumed_tail:
                data = d.unconsumed_tail  # capped output last time: feed the rest
            elif pos < end:
                data = view[pos : pos + _CHUNK]
                pos += len(data)
            else:
                data = b""  # input exhausted: drain what zlib still holds
            piece = d.decompress(data, sink.room())
            sink.add(piece)
            if not data and not piece:
                raise ContentCodingError(BAD_ENCODING)  # truncated
    except zlib.error:
        raise ContentCodingError(BAD_ENCODING) from None
    # The data fed last ended at ``pos``; what zlib did not use is after the stream.
    return pos - len(d.unused_data)


def _decode_gzip(body: bytes, sink: _Sink) -> None:
    pos = _inflate_member(body, 0, 16 + zlib.MAX_WBITS, sink)
    while pos < len(body):
        if body[pos : pos + 2] != _GZIP_MAGIC:
            raise ContentCodingError(BAD_ENCODING)  # trailing garbage
        pos = _inflate_member(body, pos, 16 + zlib.MAX_WBITS, sink)


def _has_zlib_header(body: bytes) -> bool:
    """RFC 1950 §2.2: CM = 8, CINFO <= 7, and the header is a multiple of 31."""
    return (
        len(body) >= 2
        and body[0] & 0x0F == 8
        and body[0] >> 4 <= 7
        and ((body[0] << 8) | body[1]) % 31 == 0
    )


def _decode_deflate(body: bytes, sink: _Sink) -> None:
    # RFC 9110 means zlib-wrapped; some servers send raw deflate. A raw stream
    # whose first two bytes also form a valid zlib header would need non-zero
    # padding bits in a stored block, which encoders do not write.
    wbits = zlib.MAX_WBITS if _has_zlib_header(body) else -zlib.MAX_WBITS
    if _inflate_member(body, 0, wbits, sink) != len(body):
        raise ContentCodingError(BAD_ENCODING)  # trailing garbage


def _decode_brotli(body: bytes, sink: _Sink) -> None:
    view = memoryview(body)
    d = brotli.Decompressor()
    try:
        for start in range(0, len(body), _CHUNK):
            sink.add(d.process(view[start : start + _CHUNK], output_buffer_limit=_step(sink)))
            # Output was capped: drain it before the decoder may take more input.
            while not d.can_accept_more_data():
                piece = d.process(b"", output_buffer_limit=_step(sink))
                if not piece:
                    raise ContentCodingError(BAD_ENCODING)  # no progress
                sink.add(piece)
        # Input exhausted. A decoder stopped by the output limit may still owe
        # output or the end of the stream; one without progress was cut short.
        while not d.is_finished():
            piece = d.process(b"", output_buffer_limit=_step(sink))
            if not piece and not d.is_finished():
                raise ContentCodingError(BAD_ENCODING)  # truncated
            sink.add(piece)
    except brotli.error:  # corrupt stream, or bytes after its end
        raise ContentCodingError(BAD_ENCODING) from None


def _step(sink: _Sink) -> int:
    return min(sink.room(), _STEP)


_DECODERS: Final[dict[str, Callable[[bytes, _Sink], None]]] = {
    "gzip": _decode_gzip,
    "x-gzip": _decode_gzip,
    "deflate": _decode_deflate,
    "br": _decode_brotli,
}


def _parse_content_encoding(header: str | None) -> list[str]:
    if not header:
        return []
    codings = [c for c in (item.strip(" \t").lower() for item in header.split(",")) if c]
    codings = [c for c in codings if c != "identity"]
    if len(codings) > MAX_CODINGS or any(c not in _DECODERS for c in codings):
        raise ContentCodingError(UNSUPPORTED)
    return codings


def decode_content(body: bytes, content_encoding: str | None, *, max_size: int) -> bytes:
    """Undo the codings named by a ``Content-Encoding`` value; output at most ``max_size`` bytes."""
    codings = _parse_content_encoding(content_encoding)
    if not codings and len(body) > max_size:
        raise ContentCodingError(TOO_LARGE)
    for coding in reversed(codings):
        sink = _Sink(max_size)
        _DECODERS[coding](body, sink)
        body = sink.result()
    return body


def _gzip(body: bytes) -> bytes:
    c = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # header mtime 0
    return c.compress(body) + c.flush()


def _deflate(body: bytes) -> bytes:
    return zlib.compress(body, _DEFLATE_LEVEL)


def _brotli(body: bytes) -> bytes:
    out: bytes = brotli.compress(body, mode=brotli.MODE_TEXT, quality=_BROTLI_QUALITY)
    return out


_ENCODERS: Final[dict[str, Callable[[bytes], bytes]]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _brotli,
    "identity": bytes,
}


def encode_content(body: bytes, coding: str) -> bytes:
    """Apply one content coding (``gzip``, ``deflate`` or ``br``)."""
    encoder = _ENCODERS.get(coding.strip(" \t").lower())
    if encoder is None:
        raise ContentCodingError(UNSUPPORTED)
    return encoder(body)


# What choose_encoding may answer, best first: ties in q go to the earlier one.
_OFFERED: Final = ("br", "gzip")
_ALIASES: Final = {"x-gzip": "gzip"}


def _parse_qvalue(text: str) -> float | None:
    """RFC 9110 §12.4.2 qvalue: ``0`` to ``1`` with at most three decimals."""
    whole, _, frac = text.partition(".")
    if whole not in ("0", "1") or len(frac) > 3 or not (frac.isdigit() or frac == ""):
        return None
    if not frac.isascii():
        return None
    q = float(text)
    return q if q <= 1 else None


def _parse_accept_encoding(header: str) -> dict[str, float]:
    """``"gzip;q=0.8, br"`` -> {gzip: 0.8, br: 1.0}; malformed items are ignored."""
    weights: dict[str, float] = {}
    for item in header.split(","):
        coding, *params = (part.strip(" \t") for part in item.split(";"))
        coding = coding.lower()
        if not coding:
            continue
        q: float | None = 1.0
        for param in params:
            name, eq, value = param.partition("=")
            if name.strip(" \t").lower() != "q" or not eq:
                q = None  # Accept-Encoding allows only a weight
                break
            q = _parse_qvalue(value.strip(" \t"))
            if q is None:
                break
        if q is None:
            continue  # ignoring a malformed item never grants a coding
        coding = _ALIASES.get(coding, coding)
        weights[coding] = max(q, weights.get(coding, 0.0))
    return weights


def choose_encoding(accept_encoding: str | None) -> str | None:
    """The coding to apply to a response for this ``Accept-Encoding``, or None (plain)."""
    if not accept_encoding:
        return None
    weights = _parse_accept_encoding(accept_encoding)
    star = weights.get("*", 0.0)
    best, best_q = None, 0.0
    for coding in _OFFERED:
        q = weights.get(coding, star)
        if q > best_q:
            best, best_q = coding, q
    if best is None:
        return None
    if weights.get("identity", 0.0) > best_q:
        return None  # the client prefers the body uncompressed
    return best
