"""Fuzz the native masking pass under AddressSanitizer and UBSan: ``make fuzz``.

Not a pytest module (it runs for minutes, and needs the sanitized build that
``make fuzz`` makes in ``.fuzz/``). Each run mutates a customer response (bytes
inserted, replaced or cut where the native pass has to decide: quotes,
escapes, invalid UTF-8, control bytes, numbers, truncation), masks it with a
random clearance and passes it in a buffer of exactly its size, so a read past
the end is outside the allocation and ASan stops the run. Whatever the native
pass answers must equal the reference pipeline (decode, apply, encode) byte for
byte, with the same field counts and records; a body it declines is fine
(the reference then runs in production). Exits 1 on the first mismatch,
printing only the rule-independent facts (length and seed), never the body.

Each body is also streamed (:class:`gateway.streaming.RecordStream`, split at
random points): a stream may stop, but only where the buffered native pass
declines too, and a stream that completes must write exactly its bytes, field
counts and records.
"""

from __future__ import annotations

import argparse
import ctypes
import random
import sys
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]

INSERTS = (
    *(b"", b'"', b"\\", b",", b":", b"{", b"}", b"[", b"]", b" ", b"null", b"-0", b"e9", b"."),
    *(b"1e400", b"9" * 25, b"\\u", b"\\ud800", b"\\udc00", b"\\u00e9", b"\\n", b"\x00", b"\x1f"),
    *(b"\xff", b"\x80", b"\xe4\xb8", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"),
    *(b"\xe0\x80\x80", "中文".encode(), b"\xf0\x9f\x98\x80"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    import gateway
    from gateway import _fastmask  # type: ignore[attr-defined]
    from gateway.jsoncodec import DEFAULT_MAX_DEPTH, JsonError, Number, decode, encode
    from gateway.rules import load_rules, principal_from_claims
    from gateway.rules.bench import _response, customers
    from gateway.streaming import NotStreamable, RecordStream, StreamError

    print(f"gateway from {Path(gateway.__file__).parent}", flush=True)
    rules = load_rules(ROOT / "rules", hash_key=b"fuzz-key")
    plans = [
        rules.plan("customer", principal_from_claims(claims, rules.levels))
        for level in rules.levels
        for claims in ({"clearance": level}, {"clearance": level, "department": "risk"})
    ]
    seeds = [_response(customers(n, seed=s)) for n, s in ((3, 1), (2, 5), (1, 9), (6, 11))]
    seeds.append(orjson.dumps(orjson.loads(seeds[0]), option=orjson.OPT_INDENT_2))
    seeds.append(
        '{"data":[{"id":"x\\u00e9\\n","name":"欧阳娜娜😀","address":"新疆维吾尔自治区乌鲁木齐市'
        '天山区","phone":"+86 138-1234-5678","email":"a\\"b@c.d","balance":-12.5,'
        '"credit_limit":1e3,"remarks":"\\ud83d\\ude00\\t"}]}'.encode()
    )
    rng = random.Random(args.seed)
    answered = completed = 0
    started = time.monotonic()
    for run in range(args.runs):
        body = bytearray(rng.choice(seeds))
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            at = rng.randrange(len(body) + 1)
            r = rng.random()
            if r < 0.6:
                body[at : at + rng.randint(0, 3)] = rng.choice(INSERTS)
            elif r < 0.8 and at < len(body):
                body[at] = rng.randrange(256)
            elif rng.random() < 0.5:
                del body[at:]
        data = bytes(body)
        plan = rng.choice(plans)
        spec = plan.records
        assert plan.native is not None and spec is not None
        streamed = _streams_as_buffered(RecordStream, NotStreamable, StreamError, plan, data, rng)
        if streamed is None:
            print(f"MISMATCH run {run} (seed {args.seed}): streamed, body of {len(data)} bytes")
            return 1
        completed += streamed
        exact = (ctypes.c_char * len(data)).from_buffer_copy(data) if data else b""
        got = _fastmask.mask(
            plan.native, spec.native, spec.id_bytes, memoryview(exact).cast("B"),
            DEFAULT_MAX_DEPTH, Number,
        )  # fmt: skip
        if got is None:
            continue
        answered += 1
        try:
            ref = plan.apply(decode(data))
        except JsonError:
            print(f"MISMATCH run {run} (seed {args.seed}): native answered an invalid body")
            return 1
        fast = plan.mask_bytes(data)
        if (
            fast is None
            or fast[0] != got[0]
            or fast[0] != encode(ref.document)
            or fast[1].fields != ref.fields
            or fast[1].records != ref.records
        ):
            print(f"MISMATCH run {run} (seed {args.seed}), body of {len(data)} bytes")
            return 1
    took = time.monotonic() - started
    print(f"{args.runs} bodies, {answered} answered natively, all equal to the reference;")
    print(f"{completed} streamed to the end, all equal to the buffered pass")
    print(f"({took:.0f} s)")
    return 0


def _streams_as_buffered(
    stream_type: Any,
    not_streamable: type[Exception],
    stream_error: type[Exception],
    plan: Any,
    data: bytes,
    rng: random.Random,
) -> int | None:
    """A stream of ``data`` split at random: stopped only where the buffered native pass
    declines too (not the records' shape: the buffered path decides), else equal to it.
    1 when it streamed to the end, 0 when it stopped as it should, None on a mismatch."""
    whole = plan.mask_bytes(data)
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(6)))
    stream = stream_type(plan, plan.records, max_value=1 << 20)
    out = []
    try:
        for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
            out.append(stream.feed(data[a:b]))
            stream.take_records()
        out.append(stream.finish())
    except not_streamable:
        return 0
    except stream_error:
        return 0 if whole is None else None
    got = stream.result()
    same = (
        whole is not None
        and b"".join(out) == whole[0]
        and got.fields == whole[1].fields
        and got.records == whole[1].records
    )
    return 1 if same else None


if __name__ == "__main__":
    sys.exit(main())
