"""deploy/prometheus and deploy/grafana: promtool validates and unit-tests the alert rules,
the dashboard's queries parse, and every metric they use exists in gateway/metrics.py.

promtool comes from Debian's ``prometheus`` package. Missing promtool fails the
run under CI (``CI=true``) and skips locally.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway import metrics

ROOT = Path(__file__).parent.parent
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
_NAME = re.compile(r"\bgateway_[a-z0-9_]+")


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("promtool is not installed (apt-get install -y prometheus)")
        pytest.skip("promtool is not installed (apt-get install -y prometheus)")
    return path


def run(*args: str, cwd: Path = PROM) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_promtool_check_rules(promtool: str) -> None:
    run(promtool, "check", "rules", "alerts.yml")


def test_promtool_unit_tests(promtool: str) -> None:
    run(promtool, "test", "rules", "alerts_test.yml")


def test_promtool_check_config(promtool: str) -> None:
    run(promtool, "check", "config", "prometheus.yml")


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    # Grafana variables become plain values; each query becomes a recording rule to check.
    rules = [
        {
            "record": f"dashboard:query_{i}",
            "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*"),
        }
        for i, e in enumerate(dashboard_exprs())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run(promtool, "check", "rules", str(path), cwd=tmp_path)


def exposed_series_names() -> set[str]:
    """Every sample name the registry can expose (counter _total, histogram parts)."""
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("", "_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def test_registry_exposes_exactly_the_product_names() -> None:
    names = exposed_series_names()
    assert names >= metrics.NAMES
    bases = {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
    assert bases == set(metrics.NAMES)


@pytest.mark.parametrize(
    "path", [PROM / "alerts.yml", PROM / "alerts_test.yml", DASHBOARD], ids=lambda p: p.name
)
def test_every_metric_used_exists(path: Path) -> None:
    used = set(_NAME.findall(path.read_text()))
    assert used, "no gateway_ metric found"
    assert used <= exposed_series_names(), used - exposed_series_names()


def test_dashboard_covers_every_metric() -> None:
    used = {re.sub(r"_(bucket|sum|count)$", "", n) for n in _NAME.findall(DASHBOARD.read_text())}
    assert used == set(metrics.NAMES)


def test_every_alert_has_a_unit_test() -> None:
    alerts = {
        r["alert"]
        for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    }
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    tested = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == alerts
