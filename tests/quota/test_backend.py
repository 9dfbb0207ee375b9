"""The quota semantics, run against every backend (memory and Redis) with injected time."""

from __future__ import annotations

from gateway.quota import Decision, KeyParts, QuotaBackend, QuotaUsage, ratelimit_headers
from gateway.quota.engine import Bucket
from gateway.rules.model import Quota

ALICE = KeyParts("alice", "10.0.0.1", "customers")


def quota(name: str = "bulk", per: str = "subject", window: int = 60, **th: int) -> Quota:
    alerts = {k[6:]: v for k, v in th.items() if k.startswith("alert_")}
    limits = {k[4:]: v for k, v in th.items() if k.startswith("max_")}
    return Quota(name, per, window, alerts, limits)


async def test_alert_then_block_and_refused_does_not_count(backend: QuotaBackend) -> None:
    qs = (quota(alert_records=3, max_records=5),)
    alice = backend.buckets(qs, ALICE)
    d = await backend.account(qs, alice, 2, ["a", "b"], now=0)
    assert d.allowed and d.usage["bulk"].used_records == 2 and d.usage["bulk"].alert == ()
    d = await backend.account(qs, alice, 1, ["c"], now=1)
    assert d.usage["bulk"].alert == ("records",) and d.usage["bulk"].crossed == ("records",)
    d = await backend.account(qs, alice, 1, ["d"], now=2)
    assert d.usage["bulk"].alert == ("records",) and d.usage["bulk"].crossed == ()
    d = await backend.account(qs, alice, 2, ["e", "f"], now=3)
    assert (d.allowed, d.quota, d.metric) == (False, "bulk", "records")
    assert d.usage["bulk"].used_records == 4  # the refused response is not counted
    d = await backend.account(qs, alice, 1, ["e"], now=4)
    assert d.allowed and d.usage["bulk"].used_records == 5
    d = await backend.precheck(qs, alice, now=5)
    assert (d.allowed, d.metric) == (False, "records")


async def test_untracked_metrics_read_none(backend: QuotaBackend) -> None:
    qs = (quota(max_records=5),)
    d = await backend.account(qs, backend.buckets(qs, ALICE), 2, ["a", "b"], now=0)
    u = d.usage["bulk"]
    assert (u.used_records, u.used_distinct, u.used_requests) == (2, None, None)


async def test_distinct_across_single_record_responses(backend: QuotaBackend) -> None:
    qs = (quota(max_distinct=3, alert_distinct=2),)
    alice = backend.buckets(qs, ALICE)
    for t, cid in enumerate(["a", "b", "c"]):
        d = await backend.account(qs, alice, 1, [cid], now=t)
        assert d.allowed
    assert d.usage["bulk"].used_distinct == 3 and d.usage["bulk"].alert == ("distinct",)
    d = await backend.account(qs, alice, 1, ["a"], now=3)  # seen before: still 3
    assert d.allowed and d.usage["bulk"].used_distinct == 3
    d = await backend.account(qs, alice, 1, ["d"], now=4)
    assert (d.allowed, d.metric) == (False, "distinct")
    # At the limit the pre-check still lets a caller re-read the customers it has.
    d = await backend.precheck(qs, alice, now=5)
    assert d.allowed
    d = await backend.account(qs, alice, 1, ["b"], now=5)
    assert d.allowed


async def test_new_ids_are_counted_alike_far_from_and_near_max_distinct(
    backend: QuotaBackend,
) -> None:
    # Far from the max the memory backend counts new ids as it adds them; near it,
    # it looks them up first. Both must give the same usage and crossings.
    for top in (100, 3):
        qs = (quota(f"d{top}", alert_distinct=3, max_distinct=top),)
        alice = backend.buckets(qs, ALICE)
        d = await backend.account(qs, alice, 2, ["a", "b"], now=0)
        assert d.usage[f"d{top}"].used_distinct == 2
        d = await backend.account(qs, alice, 2, ["b", "c"], now=1)  # one new
        assert d.allowed and d.usage[f"d{top}"].used_distinct == 3
        assert d.usage[f"d{top}"].crossed == ("distinct",)
        d = await backend.account(qs, alice, 2, ["c", "a"], now=2)  # none new
        assert d.allowed and d.usage[f"d{top}"].used_distinct == 3
        assert d.usage[f"d{top}"].crossed == ()
        assert dict(d.usage[f"d{top}"].reset) == {"distinct": 59}  # b is now the oldest


async def test_duplicate_ids_in_one_response_count_once(backend: QuotaBackend) -> None:
    qs = (quota(max_distinct=2),)
    d = await backend.account(qs, backend.buckets(qs, ALICE), 3, ["a", "a", "b"], now=0)
    assert d.allowed and d.usage["bulk"].used_distinct == 2


async def test_usage_drops_exactly_when_events_leave(backend: QuotaBackend) -> None:
    qs = (quota(window=10, max_records=100, max_distinct=100),)
    alice = backend.buckets(qs, ALICE)
    await backend.account(qs, alice, 3, ["a"], now=100)
    await backend.account(qs, alice, 2, ["b"], now=105)
    d = await backend.precheck(qs, alice, now=109.999)
    assert (d.usage["bulk"].used_records, d.usage["bulk"].used_distinct) == (5, 2)
    d = await backend.precheck(qs, alice, now=110)
    assert (d.usage["bulk"].used_records, d.usage["bulk"].used_distinct) == (2, 1)
    d = await backend.precheck(qs, alice, now=115)
    assert (d.usage["bulk"].used_records, d.usage["bulk"].used_distinct) == (0, 0)


async def test_seeing_an_id_again_keeps_it_in_the_window(backend: QuotaBackend) -> None:
    qs = (quota(window=10, max_distinct=100),)
    alice = backend.buckets(qs, ALICE)
    await backend.account(qs, alice, 1, ["a"], now=0)
    await backend.account(qs, alice, 1, ["a"], now=8)
    d = await backend.precheck(qs, alice, now=12)
    assert d.usage["bulk"].used_distinct == 1
    d = await backend.precheck(qs, alice, now=18)
    assert d.usage["bulk"].used_distinct == 0


async def test_records_retry_after(backend: QuotaBackend) -> None:
    qs = (quota(max_records=5),)
    alice = backend.buckets(qs, ALICE)
    await backend.account(qs, alice, 2, [], now=0)
    await backend.account(qs, alice, 3, [], now=10)
    d = await backend.precheck(qs, alice, now=20)
    assert (d.allowed, d.retry_after) == (False, 40)  # one record frees when t=0 leaves
    d = await backend.account(qs, alice, 3, [], now=20)
    assert (d.allowed, d.retry_after) == (False, 50)  # 3 records: both events must leave
    d = await backend.account(qs, alice, 6, [], now=20)
    assert (d.allowed, d.retry_after) == (False, 60)  # can never fit: the window
    d = await backend.precheck(qs, alice, now=60)
    assert d.allowed and d.usage["bulk"].used_records == 3


async def test_retry_after_rounds_up(backend: QuotaBackend) -> None:
    qs = (quota(max_records=1),)
    alice = backend.buckets(qs, ALICE)
    await backend.account(qs, alice, 1, [], now=0.5)
    d = await backend.precheck(qs, alice, now=10)
    assert d.retry_after == 51
    d = await backend.precheck(qs, alice, now=60.4)
    assert d.retry_after == 1


async def test_distinct_retry_after_ignores_ids_the_response_brings_back(
    backend: QuotaBackend,
) -> None:
    qs = (quota(max_distinct=2),)
    alice = backend.buckets(qs, ALICE)
    await backend.account(qs, alice, 1, ["a"], now=0)
    await backend.account(qs, alice, 1, ["b"], now=10)
    # {a, b} + {a, c}: a leaving does not help (the response brings it back); b must go.
    d = await backend.account(qs, alice, 2, ["a", "c"], now=20)
    assert (d.allowed, d.metric, d.retry_after) == (False, "distinct", 50)
    d = await backend.account(qs, alice, 3, ["x", "y", "z"], now=20)
    assert d.retry_after == 60
    d = await backend.precheck(qs, alice, now=20)
    assert d.allowed  # max_distinct is decided on account, not before the upstream
    d = await backend.account(qs, alice, 2, ["a", "c"], now=70)
    assert d.allowed and d.usage["bulk"].used_distinct == 2


async def test_requests_limit(backend: QuotaBackend) -> None:
    qs = (quota(max_requests=2, alert_requests=2),)
    alice = backend.buckets(qs, ALICE)
    d = await backend.precheck(qs, alice, now=0)
    assert d.allowed and d.usage["bulk"].used_requests == 1 and d.usage["bulk"].alert == ()
    d = await backend.precheck(qs, alice, now=5)
    assert d.allowed and d.usage["bulk"].crossed == ("requests",)
    d = await backend.precheck(qs, alice, now=7)
    assert (d.allowed, d.metric, d.retry_after) == (False, "requests", 53)
    assert d.usage["bulk"].used_requests == 2  # a blocked request is not counted
    d = await backend.account(qs, alice, 1, ["a"], now=8)  # account never counts requests
    assert d.allowed and d.usage["bulk"].used_requests == 2
    d = await backend.precheck(qs, alice, now=60)
    assert d.allowed and d.usage["bulk"].used_requests == 2


async def test_largest_wait_names_the_block(backend: QuotaBackend) -> None:
    qs = (quota("short", window=10, max_records=1), quota("long", window=100, max_records=1))
    alice = backend.buckets(qs, ALICE)
    await backend.account(qs, alice, 1, [], now=0)
    d = await backend.precheck(qs, alice, now=1)
    assert (d.quota, d.retry_after) == ("long", 99)
    d = await backend.precheck(qs, alice, now=50)
    assert (d.quota, d.retry_after) == ("long", 50)


async def test_per_subject_client_ip_and_subject_route(backend: QuotaBackend) -> None:
    qs = (
        quota("s", per="subject", max_records=100),
        quota("i", per="client_ip", max_records=100),
        quota("r", per="subject_route", max_records=100),
    )

    def at(subject: str, client_ip: str, route: str) -> tuple[Bucket, ...]:
        return backend.buckets(qs, KeyParts(subject, client_ip, route))

    await backend.account(qs, at("alice", "10.0.0.1", "customers"), 1, [], now=0)
    await backend.account(qs, at("alice", "10.0.0.2", "accounts"), 2, [], now=1)
    d = await backend.account(qs, at("bob", "10.0.0.1", "customers"), 4, [], now=2)
    used = {n: u.used_records for n, u in d.usage.items()}
    assert used == {"s": 4, "i": 5, "r": 4}
    d = await backend.precheck(qs, at("alice", "10.0.0.9", "customers"), now=3)
    used = {n: u.used_records for n, u in d.usage.items()}
    assert used == {"s": 3, "i": 0, "r": 1}
    assert [u.shared for u in d.usage.values()] == [False, True, False]


async def test_anonymous_callers_are_keyed_by_address(backend: QuotaBackend) -> None:
    qs = (quota(max_records=100),)

    def at(subject: str | None, client_ip: str) -> tuple[Bucket, ...]:
        return backend.buckets(qs, KeyParts(subject, client_ip, "customers"))

    await backend.account(qs, at(None, "10.0.0.1"), 1, [], now=0)
    d = await backend.account(qs, at(None, "10.0.0.2"), 1, [], now=1)
    assert d.usage["bulk"].used_records == 1 and d.usage["bulk"].shared
    d = await backend.precheck(qs, at("10.0.0.1", "10.0.0.1"), now=2)
    assert d.usage["bulk"].used_records == 0  # a subject that looks like an address is apart


async def test_a_block_in_one_key_group_undoes_the_other(backend: QuotaBackend) -> None:
    # Subject and address quotas live under different keys (two tags in Redis):
    # the refusal by one must leave the other exactly as it was.
    qs = (
        quota("ip", per="client_ip", max_records=100, max_distinct=100, max_requests=100),
        quota("sub", per="subject", max_records=3, max_distinct=2, max_requests=2),
    )
    alice = backend.buckets(qs, ALICE)
    await backend.precheck(qs, alice, now=0)
    await backend.account(qs, alice, 1, ["x"], now=0)
    d = await backend.account(qs, alice, 3, ["x", "y", "z"], now=30)
    assert (d.allowed, d.quota) == (False, "sub")
    assert (d.usage["ip"].used_records, d.usage["ip"].used_distinct) == (1, 1)
    await backend.precheck(qs, alice, now=31)
    d = await backend.precheck(qs, alice, now=32)
    assert (d.allowed, d.metric) == (False, "requests")
    assert d.usage["ip"].used_requests == 2
    # x was refreshed at t=30 by the refused call in the first group, then put back:
    d = await backend.precheck(qs, alice, now=60)
    assert (d.usage["ip"].used_records, d.usage["ip"].used_distinct) == (0, 0)


async def test_a_call_refused_by_one_key_group_reports_the_other_as_it_is(
    backend: QuotaBackend,
) -> None:
    # The address group is decided (and, in Redis, written and undone) before the
    # subject group refuses: its usage, resets and hold are those of the state the
    # refused call left, as if it had never been written.
    sub = quota("sub", per="subject", window=60, max_distinct=2)
    ip = quota("ip", per="client_ip", window=30, max_distinct=10, max_requests=1, alert_distinct=2)
    qs = (sub, ip)
    alice = backend.buckets(qs, ALICE)
    assert (await backend.precheck(qs, alice, now=0)).allowed  # the address's one request
    assert (await backend.account(qs, alice, 1, ["a"], now=0)).allowed
    assert (await backend.account(qs, alice, 1, ["b"], now=6)).allowed
    # c would be a third customer for the subject; for the address it would refresh a
    # (the oldest, seen at 0) and move its reset to b's, 23 s.
    d = await backend.account(qs, alice, 2, ["a", "c"], now=13)
    ip_usage = QuotaUsage(
        "ip",
        30,
        ip.limits,
        {"distinct": 2, "requests": 1},
        ("distinct",),
        (),
        {"distinct": 17, "requests": 17},
        True,
        {"requests": 17_000},
    )
    sub_usage = QuotaUsage("sub", 60, sub.limits, {"distinct": 2}, (), (), {"distinct": 47}, False)
    # Retry: b, the oldest customer not in the response, leaves the subject's window at 66.
    assert d == Decision(False, {"sub": sub_usage, "ip": ip_usage}, "sub", "distinct", 53)
    assert ratelimit_headers(d) == {
        "RateLimit-Policy": '"sub";q=2;w=60;qu="distinct-customers"',
        "RateLimit": '"sub";r=0;t=53',
    }
    # The address's request hold (until 30) survives the refused call.
    held = backend.held(qs, alice, now=14)
    assert held == Decision(
        False,
        {
            "ip": QuotaUsage(
                "ip",
                30,
                ip.limits,
                ip_usage.used,
                ("distinct",),
                (),
                {},
                True,
                {"requests": 16_000},
            )
        },
        "ip",
        "requests",
        16,
    )


async def test_an_undone_first_write_leaves_no_reset(backend: QuotaBackend) -> None:
    # Nothing counted for the address before: a refused call leaves nothing to reset.
    qs = (
        quota("ip", per="client_ip", window=30, alert_records=1, alert_requests=1),
        quota("sub", per="subject", window=60, max_records=1, max_requests=1),
    )
    alice = backend.buckets(qs, ALICE)
    d = await backend.account(qs, alice, 2, ["a"], now=0)
    assert (d.allowed, d.quota, d.metric, d.retry_after) == (False, "sub", "records", 60)
    assert (dict(d.usage["ip"].used), dict(d.usage["ip"].reset)) == (
        {"records": 0, "requests": 0},
        {},
    )
    assert (d.usage["ip"].alert, d.usage["ip"].crossed) == ((), ())
    assert (await backend.precheck(qs, alice, now=1)).allowed
    d = await backend.precheck(qs, alice, now=2)
    assert (d.allowed, d.quota, d.metric, d.retry_after) == (False, "sub", "requests", 59)
    assert dict(d.usage["ip"].used) == {"records": 0, "requests": 1}
    assert dict(d.usage["ip"].reset) == {"requests": 29}
    assert ratelimit_headers(d) == {
        "RateLimit-Policy": '"sub";q=1;w=60',
        "RateLimit": '"sub";r=0;t=59',
    }


async def test_over_a_lowered_max_distinct_a_response_without_ids_is_refused(
    backend: QuotaBackend,
) -> None:
    # The ids in the window with the response's are too many even when it has none.
    alice = backend.buckets((quota(max_distinct=3),), ALICE)
    assert (
        await backend.account((quota(max_distinct=3),), alice, 3, ["a", "b", "c"], now=0)
    ).allowed
    lowered = (quota(max_distinct=1),)  # a reload
    d = await backend.account(lowered, alice, 1, [], now=10)
    # Two of the three ids must leave (at 60) before the window holds at most one.
    assert (d.allowed, d.metric, d.retry_after) == (False, "distinct", 50)
    assert d.usage["bulk"].used_distinct == 3
    d = await backend.account(lowered, alice, 1, ["a"], now=11)
    assert (d.allowed, d.metric, d.retry_after) == (False, "distinct", 49)


async def test_empty_response_and_no_quotas(backend: QuotaBackend) -> None:
    qs = (quota(max_records=1, max_distinct=1),)
    d = await backend.account(qs, backend.buckets(qs, ALICE), 0, [], now=0)
    assert d.allowed and d.usage["bulk"].used_records == 0
    d = await backend.account((), (), 5, ["a"], now=0)
    assert d.allowed and d.usage == {}
    d = await backend.precheck((), ())
    assert d.allowed


async def test_backend_clock_when_no_time_given(backend: QuotaBackend) -> None:
    qs = (quota(max_records=2, max_requests=5),)
    alice = backend.buckets(qs, ALICE)
    assert (await backend.precheck(qs, alice)).allowed
    assert (await backend.account(qs, alice, 2, ["a", "b"])).allowed
    d = await backend.precheck(qs, alice)
    assert (d.allowed, d.quota, d.metric) == (False, "bulk", "records")
    assert 59 <= (d.retry_after or 0) <= 60
    await backend.ping()


# Holds: what a backend tells the request path without asking the store again.


async def test_a_caller_at_max_records_is_held_exactly_while_a_precheck_would_refuse(
    backend: QuotaBackend,
) -> None:
    qs = (quota(max_records=5),)
    alice = backend.buckets(qs, ALICE)
    await backend.account(qs, alice, 2, ["a", "b"], now=0)
    assert backend.held(qs, alice, now=1) is None  # below the limit: nothing is held
    assert (await backend.account(qs, alice, 3, ["c"], now=10)).allowed  # now at 5
    held = backend.held(qs, alice, now=20)
    assert held is not None
    assert (held.allowed, held.quota, held.metric, held.retry_after) == (
        False,
        "bulk",
        "records",
        40,
    )
    assert held.usage["bulk"].used_records == 5
    assert ratelimit_headers(held) == {
        "RateLimit-Policy": '"bulk";q=5;w=60;qu="records"',
        "RateLimit": '"bulk";r=0;t=40',
    }
    stored = await backend.precheck(qs, alice, now=20)  # the store says the same
    assert (stored.allowed, stored.retry_after) == (False, 40)
    assert backend.held(qs, alice, now=59.999) is not None
    assert backend.held(qs, alice, now=60) is None  # the moment the first event leaves
    assert (await backend.precheck(qs, alice, now=60)).allowed
    other = (quota(max_records=6),)
    assert backend.held(other, backend.buckets(other, ALICE), now=20) is None  # another definition
    bob = backend.buckets(qs, KeyParts("bob", "10.0.0.1", "customers"))
    assert backend.held(qs, bob, now=20) is None


async def test_a_caller_out_of_requests_is_held(backend: QuotaBackend) -> None:
    qs = (quota(max_requests=2, max_records=100),)
    alice = backend.buckets(qs, ALICE)
    assert (await backend.precheck(qs, alice, now=0)).allowed
    assert backend.held(qs, alice, now=1) is None
    assert (await backend.precheck(qs, alice, now=5)).allowed  # the last request that fits
    held = backend.held(qs, alice, now=7)
    assert held is not None and (held.metric, held.retry_after) == ("requests", 53)
    assert backend.held(qs, alice, now=60) is None
    d = await backend.precheck(qs, alice, now=60)
    assert d.allowed and d.usage["bulk"].used_requests == 2


async def test_only_what_blocks_a_precheck_is_held(backend: QuotaBackend) -> None:
    qs = (quota(max_records=5, max_distinct=1),)
    alice = backend.buckets(qs, ALICE)
    await backend.account(qs, alice, 4, ["a"], now=0)
    d = await backend.account(qs, alice, 2, ["a"], now=1)
    assert (d.allowed, d.metric) == (False, "records")
    # 4 of 5: a smaller response still fits, and max_distinct is decided on the response.
    assert backend.held(qs, alice, now=2) is None
    assert (await backend.account(qs, alice, 1, ["a"], now=3)).allowed
    assert backend.held(qs, alice, now=4) is not None


async def test_a_newer_answer_from_the_store_replaces_a_hold(backend: QuotaBackend) -> None:
    qs = (quota(max_records=2),)
    alice = backend.buckets(qs, ALICE)
    await backend.account(qs, alice, 2, [], now=0)
    assert backend.held(qs, alice, now=1) is not None
    raised = (quota(max_records=10),)  # a reload raised the limit
    assert (await backend.account(raised, backend.buckets(raised, ALICE), 1, [], now=2)).allowed
    assert backend.held(raised, backend.buckets(raised, ALICE), now=3) is None
    assert backend.held(qs, alice, now=3) is None  # forgotten, not guessed


async def test_an_undone_write_leaves_no_hold(backend: QuotaBackend) -> None:
    qs = (
        quota("ip", per="client_ip", max_records=3),
        quota("sub", per="subject", max_records=2),
    )
    alice = backend.buckets(qs, ALICE)
    d = await backend.account(qs, alice, 3, ["x", "y", "z"], now=0)
    assert (d.allowed, d.quota) == (False, "sub")
    # The address quota would be at its max had the response been delivered; it was not.
    assert backend.held(qs, alice, now=1) is None
    assert (await backend.account(qs, alice, 2, [], now=2)).allowed
    held = backend.held(qs, alice, now=3)
    assert held is not None and held.quota == "sub" and set(held.usage) == {"sub"}


async def test_reset_follows_the_oldest_entry_as_ids_are_seen_again(
    backend: QuotaBackend,
) -> None:
    qs = (quota(window=60, max_records=100, max_distinct=100),)
    alice = backend.buckets(qs, ALICE)

    async def reset(records: int, ids: list[str], now: float) -> dict[str, int]:
        d = await backend.account(qs, alice, records, ids, now=now)
        return dict(d.usage["bulk"].reset)

    assert await reset(1, ["a"], 0) == {"records": 60, "distinct": 60}
    assert await reset(1, ["b"], 10) == {"records": 50, "distinct": 50}
    assert await reset(1, ["a"], 20) == {"records": 40, "distinct": 50}  # b is now the oldest
    assert await reset(2, ["a", "b"], 30) == {"records": 30, "distinct": 60}  # all seen again
    d = await backend.precheck(qs, alice, now=65)
    assert dict(d.usage["bulk"].reset) == {"records": 5, "distinct": 25}
    assert (d.usage["bulk"].used_records, d.usage["bulk"].used_distinct) == (4, 2)


async def test_calls_given_the_callers_buckets_once_decide_and_hold_as_when_keyed_again(
    backend: QuotaBackend,
) -> None:
    # The request path computes a caller's buckets once and hands them to every call.
    qs = (
        quota("ip", per="client_ip", max_records=100),
        quota("sub", per="subject", max_records=3, max_requests=10),
        quota("r", per="subject_route", alert_records=1),
    )
    buckets = backend.buckets(qs, ALICE)
    assert len(buckets) == 3 and buckets[1].tag == buckets[2].tag != buckets[0].tag
    d = await backend.precheck(qs, buckets, now=0)
    assert d.allowed and d.usage["sub"].used_requests == 1
    d = await backend.account(qs, buckets, 2, ["a"], now=1)
    assert d.allowed and [u.used_records for u in d.usage.values()] == [2, 2, 2]
    again = backend.buckets(qs, ALICE)  # keyed again: the same buckets, the same state
    d = await backend.account(qs, again, 1, ["b"], now=2)
    assert d.allowed and d.usage["sub"].used_records == 3
    assert backend.held(qs, buckets, now=3) == backend.held(qs, again, now=3)
    held = backend.held(qs, buckets, now=3)
    assert held is not None and (held.quota, held.metric) == ("sub", "records")
    d = await backend.precheck(qs, buckets, now=4)
    assert (d.allowed, d.quota) == (False, "sub")


async def test_calls_use_the_buckets_they_are_given(backend: QuotaBackend) -> None:
    qs = (quota(max_records=5),)
    alice = backend.buckets(qs, ALICE)
    bob = backend.buckets(qs, KeyParts("bob", "10.0.0.2", "customers"))
    await backend.account(qs, bob, 2, [], now=0)
    d = await backend.precheck(qs, bob, now=1)
    assert d.usage["bulk"].used_records == 2
    d = await backend.precheck(qs, alice, now=1)
    assert d.usage["bulk"].used_records == 0
