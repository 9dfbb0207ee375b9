from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main

PRODUCT_EXAMPLE = Path(__file__).parent / "data" / "product_gateway.yaml"


def test_check_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "rules").mkdir()
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(PRODUCT_EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    assert main(["check", "-c", str(cfg)]) == 0
    assert "ok:" in capsys.readouterr().out


def test_check_reports_errors_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        "upstreams: {crm: {url: 'http://x'}}\nroutes: [{name: a, path: /a, upstream: crn}]\n",
        encoding="utf-8",
    )
    assert main(["check", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert f"error: {cfg}:2: routes[0].upstream: unknown upstream 'crn'" in err


def test_shipped_deploy_config_checks() -> None:
    root = Path(__file__).parent.parent
    assert main(["check", "-c", str(root / "deploy" / "gateway.yaml")]) == 0
