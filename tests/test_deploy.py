"""The shipped deployment examples load and pass `gateway check` (they must not drift)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.cli import main

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_HASH_KEY", "k" * 32)
    monkeypatch.setenv("DEV_SIGNING_KEY", "d" * 40)
    monkeypatch.setenv("GATEWAY_RULES", str(ROOT / "rules"))


def test_compose_config_checks() -> None:
    assert main(["check", "-c", str(DEPLOY / "compose.yaml")]) == 0


def test_kubernetes_configmap_checks(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "gateway.yaml").read_text()))
    kinds = [d["kind"] for d in docs]
    assert kinds == ["ConfigMap", "Secret", "Deployment", "Service"]
    text = docs[0]["data"]["gateway.yaml"].replace("/etc/gateway/rules", str(ROOT / "rules"))
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(text, encoding="utf-8")
    assert main(["check", "-c", str(cfg)]) == 0


def test_compose_services() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    assert set(compose["services"]) == {"legacy", "redis", "gateway", "prometheus", "grafana"}
    for volume in compose["services"]["grafana"]["volumes"]:
        assert (DEPLOY / volume.split(":")[0]).exists(), volume
