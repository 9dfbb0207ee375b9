"""gateway.metrics: the PRODUCT.md names appear, labels are bounded, rules_info is exclusive."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics


def samples() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.metrics_body().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(name: str, **labels: str) -> float:
    return samples().get((name, frozenset(labels.items())), 0.0)


def test_every_product_name_is_exposed_after_observations() -> None:
    metrics.observe_request(
        "customers",
        200,
        "allow",
        0.012,
        0.008,
        policy="customer",
        fields={"masked": {"phone": 2}, "dropped": {"txn_password": 1}, "hashed": {}},
        records=2,
    )
    metrics.quota_event("bulk-read", "alert")
    metrics.auth_failure("expired")
    metrics.fail_closed("bad_json")
    metrics.audit_dropped("file", 3)
    metrics.rules_reloaded(True, "v1")
    metrics.set_state_up(True)
    text = metrics.metrics_body().decode()
    exposed = {m.group(1) for m in re.finditer(r"^# TYPE (\S+)", text, re.M)}
    for name in metrics.NAMES:
        base = name.removesuffix("_total")
        assert base in exposed or name in exposed, name
    assert not {n for n in exposed if not n.startswith("gateway_")}


def test_request_accounting_labels() -> None:
    before = value("gateway_requests_total", route="customers", status="200", decision="allow")
    recs = value("gateway_records_total", route="customers")
    masked = value("gateway_fields_total", policy="customer", rule="phone", action="masked")
    metrics.observe_request(
        "customers", 200, "allow", 0.5, 0.3, "customer", {"masked": {"phone": 4}}, 7
    )
    assert (
        value("gateway_requests_total", route="customers", status="200", decision="allow")
        == before + 1
    )
    assert value("gateway_records_total", route="customers") == recs + 7
    assert (
        value("gateway_fields_total", policy="customer", rule="phone", action="masked")
        == masked + 4
    )
    assert value("gateway_request_duration_seconds_bucket", route="customers", le="0.5") >= 1


def test_field_counts_show_in_every_collection() -> None:
    # Single-process mode sums field counts on the request path and adds them to the
    # prometheus children on collect: whatever collects must see every count so far.
    series = {"policy": "customer", "rule": "fold-check", "action": "hashed"}
    start = value("gateway_fields_total", **series)
    for i in range(1, 4):
        metrics.observe_request(
            "customers", 200, "allow", 0.01, None, "customer", {"hashed": {"fold-check": 2}}
        )
        assert value("gateway_fields_total", **series) == start + 2 * i  # metrics_body
        got = metrics.REGISTRY.get_sample_value("gateway_fields_total", series)
        assert got == start + 2 * i  # REGISTRY.collect(), as any other reader would
    metrics.observe_request("customers", 200, "allow", 0.01, None, "customer", {"hashed": {}})
    metrics.observe_request("customers", 200, "deny_route", 0.01, None, None, None)
    assert value("gateway_fields_total", **series) == start + 6


def test_field_series_starts_when_first_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    # gateway_fields_created is the time of the first count, not of the first scrape.
    with monkeypatch.context() as m:
        m.setattr(time, "time", lambda: 1000.0)
        metrics.observe_request(
            "customers", 200, "allow", 0.01, None, "customer", {"masked": {"created-check": 1}}
        )
    labels = {"policy": "customer", "rule": "created-check", "action": "masked"}
    assert value("gateway_fields_created", **labels) == 1000.0
    assert value("gateway_fields_total", **labels) == 1


def test_negative_field_count_is_refused_when_counted() -> None:
    with pytest.raises(ValueError):
        metrics.observe_request(
            "customers", 200, "allow", 0.01, None, "customer", {"masked": {"neg-check": -1}}
        )
    # The scrape is not the one to fail, and nothing was counted.
    assert value("gateway_fields_total", policy="customer", rule="neg-check", action="masked") == 0


def test_families_keep_their_order() -> None:
    text = metrics.metrics_body().decode()
    types = [m.group(1) for m in re.finditer(r"^# TYPE (\S+)", text, re.M)]
    order = [t for t in types if not t.endswith("_created")]
    fields = order.index("gateway_fields_total")  # collected behind its fold, still here
    assert order[fields - 1] == "gateway_upstream_duration_seconds"
    assert order[fields + 1] == "gateway_records_total"


def test_scrapes_from_another_thread_lose_no_field_count() -> None:
    series = {"policy": "customer", "rule": "thread-check", "action": "redacted"}
    start = value("gateway_fields_total", **series)
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            metrics.metrics_body()

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for _ in range(2000):
            metrics.observe_request(
                "customers", 200, "allow", 0.01, None, "customer", {"redacted": {"thread-check": 1}}
            )
    finally:
        done.set()
        scraper.join()
    assert value("gateway_fields_total", **series) == start + 2000


def test_unknown_route_is_none_and_denials_count_reasons() -> None:
    auth = value("gateway_auth_failures_total", reason="bad_signature")
    closed = value("gateway_fail_closed_total", reason="state_unavailable")
    metrics.observe_request(None, 404, "deny_route", 0.001, reason="no_route")
    metrics.observe_request("customers", 401, "deny_auth", 0.001, reason="bad_signature")
    metrics.observe_request("customers", 503, "fail_closed", 0.001, reason="state_unavailable")
    assert value("gateway_requests_total", route="none", status="404", decision="deny_route") >= 1
    assert value("gateway_auth_failures_total", reason="bad_signature") == auth + 1
    assert value("gateway_fail_closed_total", reason="state_unavailable") == closed + 1


def test_rules_info_only_for_the_loaded_version() -> None:
    metrics.set_rules_version("v1")
    metrics.set_rules_version("v2")
    assert value("gateway_rules_info", version="v2") == 1
    assert ("gateway_rules_info", frozenset({("version", "v1")})) not in samples()
    errors = value("gateway_rules_reloads_total", result="error")
    metrics.rules_reloaded(False)
    assert value("gateway_rules_reloads_total", result="error") == errors + 1
    assert value("gateway_rules_info", version="v2") == 1
    metrics.set_rules_version(None)
    assert not [k for k in samples() if k[0] == "gateway_rules_info"]


def test_state_up_and_quota_kinds() -> None:
    metrics.set_state_up(False)
    assert value("gateway_state_up") == 0
    metrics.set_state_up(True)
    assert value("gateway_state_up") == 1
    with pytest.raises(ValueError):
        metrics.quota_event("bulk-read", "warn")


def test_multiprocess_mode_merges_worker_files(tmp_path: Path) -> None:
    # A fresh interpreter: the multiprocess value class is chosen when prometheus_client loads.
    code = """
import os, sys
from gateway import metrics
metrics.observe_request("customers", 200, "allow", 0.01, 0.005, "customer", {"masked": {"p": 1}}, 1)
metrics.set_state_up(True)
metrics.set_rules_version("v1")
metrics.set_rules_version("v2")
sys.stdout.write(metrics.metrics_body().decode())
"""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert 'gateway_requests_total{decision="allow",route="customers",status="200"} 1.0' in out
    # The worker's own /metrics folds its held-back field counts first.
    assert 'gateway_fields_total{action="masked",policy="customer",rule="p"} 1.0' in out
    assert "gateway_state_up 1.0" in out
    assert 'gateway_rules_info{version="v2"} 1.0' in out
    assert 'gateway_rules_info{version="v1"} 0.0' in out
    assert list(tmp_path.iterdir())  # values live in the shared directory


def test_multiprocess_field_counts_reach_the_files_on_a_timer_and_on_stop(tmp_path: Path) -> None:
    # The supervisor reads the files without asking the workers: held-back field counts
    # must get there by themselves, within the fold interval and when the worker stops.
    code = """
import asyncio, contextlib, sys
from gateway import metrics
series = 'gateway_fields_total{action="masked",policy="customer",rule="p"}'
def seen():
    text = metrics.merged_body(sys.argv[1]).decode()
    return [l for l in text.splitlines() if l.startswith(series)]
metrics.observe_request("r", 200, "allow", 0.01, 0.005, "customer", {"masked": {"p": 2}}, 1)
print(seen())
async def run(stop_after):
    task = asyncio.create_task(metrics.fold_fields_every(0.05))
    await asyncio.sleep(stop_after)
    print(seen())
    metrics.observe_request("r", 200, "allow", 0.01, 0.005, "customer", {"masked": {"p": 3}}, 1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    print(seen())
asyncio.run(run(0.3))
"""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        env=env,
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    line = 'gateway_fields_total{action="masked",policy="customer",rule="p"} '
    # The series exists from its first count (at 0 until the first fold).
    assert out == [repr([line + "0.0"]), repr([line + "2.0"]), repr([line + "5.0"])]
