from __future__ import annotations

import json
import shutil
from pathlib import Path

import jwt
import pytest

from gateway.cli import main

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent


@pytest.fixture
def product_dir(tmp_path: Path) -> Path:
    """The PRODUCT.md gateway.yaml and rules/ exactly as written there."""
    shutil.copytree(DATA / "product_rules", tmp_path / "rules")
    shutil.copy(DATA / "product_gateway.yaml", tmp_path / "gateway.yaml")
    return tmp_path


def test_check_ok(
    product_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_HASH_KEY", "k" * 32)
    assert main(["check", "-c", str(product_dir / "gateway.yaml")]) == 0
    out = capsys.readouterr().out
    assert "3 routes, 1 upstreams, 1 policies, levels public, internal, confidential, secret" in out


def test_check_names_missing_hash_key_once(
    product_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_HASH_KEY", raising=False)
    cfg = product_dir / "gateway.yaml"
    assert main(["check", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"error: {cfg}: hash_key_env: environment variable GATEWAY_HASH_KEY is not set "
        "(the key for hash actions; keep it stable across restarts)",
        "1 error(s) in configuration",
    ]


def test_check_reports_rule_and_route_errors_together(
    product_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_HASH_KEY", "k" * 32)
    cfg = product_dir / "gateway.yaml"
    text = cfg.read_text(encoding="utf-8").replace("policy: customer}", "policy: custmer}", 1)
    cfg.write_text(text.replace("min_level: confidential", "min_level: Confidential"))
    rules = product_dir / "rules" / "customer.yaml"
    rules.write_text(rules.read_text().replace("{mask: cn_id}", "{mask: cnid}"))
    assert main(["check", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    rules_file = product_dir / "rules" / "customer.yaml"
    # The rules do not load, so route checks that need them are not reported as noise.
    assert err.splitlines() == [
        f"error: {rules_file}:6: fields[1].action.mask: unknown preset 'cnid' "
        "(one of: cn_id, cn_phone, bank_card, email, cn_name, address)",
        "1 error(s) in configuration",
    ]
    rules.write_text(rules.read_text().replace("{mask: cnid}", "{mask: cn_id}"))
    assert main(["check", "-c", str(cfg)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: {cfg}:16: routes[0].policy: unknown policy 'custmer' (known: customer)",
        f"error: {cfg}:17: routes[1].min_level: unknown level 'Confidential'; "
        "levels are public, internal, confidential, secret",
        "2 error(s) in configuration",
    ]


def test_check_reports_errors_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        "upstreams: {crm: {url: 'http://x'}}\n"
        "routes: [{name: a, path: /a, upstream: crn, auth: none}]\n",
        encoding="utf-8",
    )
    assert main(["check", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert f"error: {cfg}:2: routes[0].upstream: unknown upstream 'crn'" in err


def test_shipped_deploy_config_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_HASH_KEY", "k" * 32)
    assert main(["check", "-c", str(ROOT / "deploy" / "gateway.yaml")]) == 0


def test_token_signs_for_the_first_hmac_issuer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "x" * 40
    monkeypatch.setenv("DEV_KEY", secret)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(
        "upstreams: {crm: {url: 'http://x'}}\n"
        "auth: {issuers: [{issuer: dev, audience: gw, hmac_secret_env: DEV_KEY, "
        "algorithms: [HS256]}]}\n"
        "routes: [{name: a, path: /a, upstream: crm}]\n",
        encoding="utf-8",
    )
    claims = json.dumps({"sub": "t1", "clearance": "internal"})
    assert main(["token", "-c", str(cfg), "--claims", claims]) == 0
    tok = capsys.readouterr().out.strip()
    decoded = jwt.decode(tok, secret, algorithms=["HS256"], audience="gw", issuer="dev")
    assert decoded["sub"] == "t1" and decoded["exp"] - decoded["iat"] == 3600


def test_token_rejects_bad_claims(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--claims", "[1]"]) == 1
    assert "--claims: must be a JSON object" in capsys.readouterr().err


def test_shipped_rule_cases_pass_through_the_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_HASH_KEY", "k" * 32)
    assert main(["test", "-c", str(ROOT / "deploy" / "gateway.yaml")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(" passed, 0 failed")


def test_test_fails_with_exit_1_and_a_diff(
    product_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_HASH_KEY", "k" * 32)
    case = product_dir / "rules" / "tests" / "customer_test.yaml"
    case.write_text(case.read_text().replace('"138****5678"', '"13812345678"'))
    assert main(["test", "-c", str(product_dir / "gateway.yaml")]) == 1
    out = capsys.readouterr().out
    assert "FAIL tellers see the phone masked and never the password" in out
    assert "13812345678" in out and "138****5678" in out
    assert out.splitlines()[-1] == "0 passed, 1 failed"


def test_test_without_config_explains_route_cases(
    product_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["test", str(product_dir / "rules")]) == 1
    assert "run with -c gateway.yaml to map routes to policies" in capsys.readouterr().out


def test_explain_prints_document_and_reasons(
    product_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_HASH_KEY", "k" * 32)
    doc = product_dir / "resp.json"
    doc.write_text('{"data":[{"id":1,"phone":"13812345678","password":"x","amount":100.10}]}')
    claims = '{"sub": "t1", "roles": ["teller"]}'
    cfg = str(product_dir / "gateway.yaml")
    assert main(["explain", "-c", cfg, "--route", "customers", "--claims", claims, str(doc)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("policy customer, clearance confidential (subject t1)")
    assert '"phone": "138****5678"' in out and '"amount": 100.10' in out
    assert "password" in out and "level never" in out
    assert "13812345678" not in out.split("field value(s) touched")[0]
