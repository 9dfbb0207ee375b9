"""Pure parts of the quota engine: key scheme, decisions and RateLimit headers."""

from __future__ import annotations

import pytest

from gateway.quota.engine import (
    Bucket,
    Decision,
    Keyer,
    KeyParts,
    Observation,
    QuotaUsage,
    decide,
    fingerprint,
    ratelimit_headers,
    seconds,
)
from gateway.quota.holds import Holds
from gateway.rules.model import Quota

ALICE = KeyParts("alice", "10.0.0.1", "customers")


def usage(name: str, limits: dict[str, int], used: dict[str, int], **kw: object) -> QuotaUsage:
    reset = kw.get("reset", {})
    return QuotaUsage(name, 3600, limits, used, (), (), reset, bool(kw.get("shared", False)))  # type: ignore[arg-type]


def test_seconds_round_up_and_at_least_one() -> None:
    assert [seconds(ms) for ms in (1, 999, 1000, 1001, 60000)] == [1, 1, 1, 2, 60]


def test_keys_never_hold_names_in_clear_and_cannot_add_tags() -> None:
    keyer = Keyer(b"secret")
    hostile = KeyParts("eve}{x}:*", "10.0.0.1", "r{o}u:te")
    b = keyer.bucket(Quota("bulk{1}:x", "subject_route", 60, {}, {"records": 1}), hostile)
    assert b.tag.startswith("s:") and len(b.tag) == 26 and "eve" not in b.tag
    assert b.name == "r:bulk%7B1%7D%3Ax:r%7Bo%7Du%3Ate"
    assert not any(c in b.name + b.tag for c in "{}")
    ip = keyer.bucket(Quota("q", "client_ip", 60, {}, {"records": 1}), hostile)
    assert ip.tag.startswith("i:") and ip.shared and ip.name == "i:q"


def test_subject_quotas_share_the_subject_tag() -> None:
    keyer = Keyer()
    tags = {
        keyer.bucket(Quota("a", per, 60, {}, {"records": 1}), ALICE).tag
        for per in ("subject", "subject_route")
    }
    assert len(tags) == 1


def test_buckets_of_several_quotas_are_each_quotas_bucket() -> None:
    keyer = Keyer(b"k")
    qs = [
        Quota(n, per, 60, {}, {"records": 1})
        for n, per in (
            ("a", "subject"),
            ("b", "client_ip"),
            ("c", "subject_route"),
            ("d", "subject"),
        )
    ]
    for parts in (ALICE, KeyParts(None, "10.0.0.2", "customers")):
        assert keyer.buckets(qs, parts) == tuple(Keyer(b"k").bucket(q, parts) for q in qs)
    assert keyer.buckets([], ALICE) == ()


def test_id_digests_are_keyed_deduplicated_and_opaque() -> None:
    a, b = Keyer(b"one"), Keyer(b"two")
    got = a.ids(["110101199003074514", "x", "110101199003074514"])
    assert len(got) == 2 and all(len(d) == 16 for d in got)
    assert b"1101011990" not in b"".join(got)
    assert got != b.ids(["110101199003074514", "x"])
    assert Keyer(b"k" * 100).ids(["x"]) == Keyer(b"k" * 100).ids(["x"])  # long keys work


def test_what_the_engine_reads_of_a_quota_is_derived_once_at_load() -> None:
    q = Quota("bulk-read", "subject", 3600, {"records": 200}, {"records": 500, "distinct": 100})
    assert (q.window_ms, q.tracks, q.fingerprint) == (
        3_600_000,
        (True, True, False),
        "3600000:500:100:0",
    )
    assert fingerprint(q) == q.fingerprint
    # Alert thresholds in METRICS order whatever order they were written in.
    both = Quota("b", "subject", 60, {"requests": 3, "records": 2}, {})
    assert (q.alert_order, both.alert_order) == (
        (("records", 200),),
        (("records", 2), ("requests", 3)),
    )
    paced = Quota("p", "client_ip", 60, {"requests": 5}, {})
    assert (paced.tracks, paced.fingerprint) == ((False, False, True), "60000:0:0:0")
    # Derived, so neither compared nor shown.
    assert q == Quota(
        "bulk-read", "subject", 3600, {"records": 200}, {"records": 500, "distinct": 100}
    )
    assert "fingerprint" not in repr(q)


def test_decide_marks_crossings_once() -> None:
    q = Quota("q", "subject", 60, {"records": 10}, {"records": 20})
    b = Bucket("s:x", "s:q", False)
    d = decide([q], [b], [Observation(used={"records": 12}, added={"records": 5})])
    assert d.allowed and d.usage["q"].alert == ("records",) and d.usage["q"].crossed == ("records",)
    d = decide([q], [b], [Observation(used={"records": 12}, added={"records": 1})])
    assert d.usage["q"].crossed == ()


def test_decide_ties_name_the_first_quota() -> None:
    qs = [Quota(n, "subject", 60, {}, {"records": 1}) for n in ("a", "b")]
    bs = [Bucket("s:x", f"s:{q.name}", False) for q in qs]
    obs = [Observation(used={"records": 1}, retry_ms={"records": 5000}) for _ in qs]
    d = decide(qs, bs, obs)
    assert (d.allowed, d.quota, d.metric, d.retry_after) == (False, "a", "records", 5)


def test_headers_name_the_most_constrained_limit() -> None:
    d = Decision(
        True,
        {
            "bulk-read": usage(
                "bulk-read",
                {"records": 500, "distinct": 100},
                {"records": 380, "distinct": 40},
                reset={"records": 30, "distinct": 12},
            ),
            "paced": usage("paced", {"requests": 1000}, {"requests": 10}, reset={"requests": 3}),
        },
    )
    assert ratelimit_headers(d) == {
        "RateLimit-Policy": '"bulk-read";q=500;w=3600;qu="records"',
        "RateLimit": '"bulk-read";r=120;t=30',
    }


def test_headers_for_a_requests_limit_use_the_default_unit() -> None:
    d = Decision(True, {"p": usage("p", {"requests": 10}, {"requests": 0})})
    assert ratelimit_headers(d) == {
        "RateLimit-Policy": '"p";q=10;w=3600',
        "RateLimit": '"p";r=10;t=0',
    }


def test_headers_when_blocked() -> None:
    d = Decision(
        False,
        {"b": usage("b", {"distinct": 100}, {"distinct": 100})},
        quota="b",
        metric="distinct",
        retry_after=42,
    )
    assert ratelimit_headers(d) == {
        "RateLimit-Policy": '"b";q=100;w=3600;qu="distinct-customers"',
        "RateLimit": '"b";r=0;t=42',
    }


def test_headers_never_show_shared_buckets() -> None:
    shared = usage("ip", {"records": 10}, {"records": 9}, shared=True)
    assert ratelimit_headers(Decision(True, {"ip": shared})) == {}
    blocked = Decision(False, {"ip": shared}, quota="ip", metric="records", retry_after=3)
    assert ratelimit_headers(blocked) == {}
    assert ratelimit_headers(Decision(True, {})) == {}
    alerts_only = usage("a", {}, {"records": 9})
    assert ratelimit_headers(Decision(True, {"a": alerts_only})) == {}


def test_header_names_are_valid_structured_strings() -> None:
    d = Decision(True, {'a"b\\c€': usage('a"b\\c€', {"records": 5}, {"records": 1})})
    assert ratelimit_headers(d)["RateLimit"] == '"a\\"b\\\\c_";r=4;t=0'


def test_headers_follow_a_changed_limit_of_the_same_quota() -> None:
    # The policy strings are cached by name, limit, window and metric: a reload that
    # changes the limit gets its own, and the same limit again the same text.
    b = Bucket("s:x", "s:q", False)
    for top in (10, 20, 10):
        q = Quota("q", "subject", 60, {}, {"records": top})
        d = decide([q], [b], [Observation(used={"records": 4}, reset_ms={"records": 1500})])
        assert ratelimit_headers(d) == {
            "RateLimit-Policy": f'"q";q={top};w=60;qu="records"',
            "RateLimit": f'"q";r={top - 4};t=2',
        }


def test_decide_wants_one_bucket_and_one_observation_per_quota() -> None:
    q = Quota("q", "subject", 60, {}, {"records": 1})
    b = Bucket("s:x", "s:q", False)
    with pytest.raises(ValueError):
        decide([q], [b, b], [Observation()])
    with pytest.raises(ValueError):
        decide([q], [b], [])
    with pytest.raises(ValueError):
        Holds().learn([q], [], decide([q], [b], [Observation()]), 0.0)
