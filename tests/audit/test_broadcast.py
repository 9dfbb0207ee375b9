"""AuditBroadcaster: filters, slow subscribers drop instead of blocking, close, cap."""

from __future__ import annotations

import orjson
import pytest

from gateway.audit.broadcast import AuditBroadcaster, TooManySubscribers


def rec(i: int, **kw: str) -> dict[str, object]:
    return {"request_id": f"r{i}", "subject": "s", "route": "customers", "decision": "allow", **kw}


async def test_filters_match_any_of_the_values() -> None:
    b = AuditBroadcaster()
    sub = b.subscribe({"decision": ["deny_auth", "rate_limited"], "route": ["customers"]})
    b.publish(rec(1))
    b.publish(rec(2, decision="rate_limited"))
    b.publish(rec(3, decision="deny_auth", route="ops"))
    b.publish(rec(4, decision="deny_auth"))
    got = [orjson.loads(await sub.get() or b"")["request_id"] for _ in range(2)]
    assert got == ["r2", "r4"]
    assert sub.queue.empty()


async def test_slow_subscriber_drops_and_counts() -> None:
    b = AuditBroadcaster(queue_size=3)
    sub = b.subscribe()
    for i in range(10):
        b.publish(rec(i))  # never blocks
    assert sub.take_dropped() == 7
    assert sub.take_dropped() == 0


async def test_close_ends_every_subscription_even_a_full_one() -> None:
    b = AuditBroadcaster(queue_size=1)
    sub = b.subscribe()
    b.publish(rec(1))
    b.close()
    assert await sub.get() is None
    assert await b.subscribe().get() is None


def test_cap_unsubscribe_and_unknown_filter() -> None:
    b = AuditBroadcaster(max_subscribers=1)
    sub = b.subscribe()
    with pytest.raises(TooManySubscribers):
        b.subscribe()
    b.unsubscribe(sub)
    assert b.subscribers == 0
    with pytest.raises(ValueError):
        b.subscribe({"phone": ["1"]})


async def test_drops_upstream_of_a_relay_are_reported_to_every_subscriber() -> None:
    b = AuditBroadcaster()
    subs = [b.subscribe(), b.subscribe({"route": ["ops"]})]
    b.note_dropped(3)
    b.note_dropped(0)
    assert [s.take_dropped() for s in subs] == [3, 3]
    assert [s.take_dropped() for s in subs] == [0, 0]
