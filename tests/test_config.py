from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError
from gateway.units import parse_duration, parse_size

PRODUCT_EXAMPLE = Path(__file__).parent / "data" / "product_gateway.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "rules").mkdir(exist_ok=True)
    p = tmp_path / "gateway.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def _errors(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_config(path, env=env or {})
    return [str(i) for i in err.value.issues]


MINIMAL = """\
listen: 127.0.0.1:8080
upstreams:
  crm: {url: "http://127.0.0.1:9000"}
routes:
  - {name: a, path: "/api/**", upstream: crm, auth: none}
"""


def test_product_example_loads_as_written(tmp_path: Path) -> None:
    p = _write(tmp_path, PRODUCT_EXAMPLE.read_text(encoding="utf-8"))
    cfg = load_config(p, env={})
    assert [r.name for r in cfg.routes] == ["customers", "branch-ops", "health"]
    assert cfg.routes[2].auth == "none"
    assert cfg.routes[1].allow_hours == "08:00-20:00 Asia/Shanghai"
    assert cfg.upstreams["crm"].timeout == 30
    assert cfg.state.on_failure == "closed"
    assert cfg.resolve(cfg.rules or "") == tmp_path / "rules"


def test_unknown_upstream_names_file_key_and_line(tmp_path: Path) -> None:
    p = _write(tmp_path, MINIMAL + '  - {name: b, path: "/x", upstream: crn, auth: none}\n')
    assert _errors(p) == [f"{p}:6: routes[1].upstream: unknown upstream 'crn'"]


def test_unknown_keys_are_rejected_everywhere(tmp_path: Path) -> None:
    text = MINIMAL.replace("{url:", "{tmeout: 3, url:") + "limits: {max_body: 1}\nlisen: x\n"
    assert _errors(_write(tmp_path, text)) == [
        f"{tmp_path}/gateway.yaml:3: upstreams.crm.tmeout: unknown key",
        f"{tmp_path}/gateway.yaml:6: limits.max_body: unknown key",
        f"{tmp_path}/gateway.yaml:7: lisen: unknown key",
    ]


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    text = """\
listen: nowhere
upstreams:
  crm: {url: "ftp://x"}
routes:
  - {name: a, path: "api/**", upstream: crm, methods: [get]}
  - {path: "/b", upstream: crm, auth: none}
"""
    errors = _errors(_write(tmp_path, text))
    f = f"{tmp_path}/gateway.yaml"
    assert errors == [
        f"{f}:1: listen: expected HOST:PORT, e.g. 0.0.0.0:8080",
        f"{f}:3: upstreams.crm.url: must be an http:// or https:// URL with a host",
        f"{f}:5: routes[0].path: route path must start with '/'",
        f"{f}:5: routes[0].methods: methods are upper-case HTTP method names",
        f"{f}:6: routes[1].name: required key is missing",
    ]


def test_env_interpolation_defaults_and_escapes(tmp_path: Path) -> None:
    text = MINIMAL.replace('"http://127.0.0.1:9000"', '"http://${UP_HOST}:${UP_PORT:-9000}"')
    text = text.replace("routes:", 'request_id_header: "X-$${literal}"\nroutes:')
    cfg = load_config(_write(tmp_path, text), env={"UP_HOST": "10.0.0.7"})
    assert cfg.upstreams["crm"].url == "http://10.0.0.7:9000"
    assert cfg.request_id_header == "X-${literal}"


def test_missing_env_var_is_named(tmp_path: Path) -> None:
    text = MINIMAL.replace("{url:", '{headers: {Authorization: "Basic ${LEGACY_CRED}"}, url:')
    assert _errors(_write(tmp_path, text)) == [
        f"{tmp_path}/gateway.yaml:3: upstreams.crm.headers.Authorization: "
        "environment variable LEGACY_CRED is not set"
    ]


def test_duplicate_yaml_keys_and_route_names(tmp_path: Path) -> None:
    dup = _write(tmp_path, MINIMAL + "listen: 127.0.0.1:1\n")
    assert _errors(dup) == [f"{dup}:6: listen: duplicate key"]
    names = _write(tmp_path, MINIMAL + '  - {name: a, path: "/b", upstream: crm, auth: none}\n')
    assert _errors(names) == [f"{names}:6: routes[1].name: duplicate route name 'a'"]


def test_syntax_error_has_a_line(tmp_path: Path) -> None:
    p = _write(tmp_path, MINIMAL + "  - {name: [\n")
    (err,) = _errors(p)
    assert err.startswith(f"{p}:") and "(syntax)" in err


def test_files_referenced_must_exist(tmp_path: Path) -> None:
    text = MINIMAL + "tls: {cert_file: missing.pem, key_file: missing.key}\nrules: nope/\n"
    p = _write(tmp_path, text)
    assert _errors(p) == [
        f"{p}:6: tls.cert_file: file not found",
        f"{p}:6: tls.key_file: file not found",
        f"{p}:7: rules: directory not found",
    ]


def test_not_a_mapping(tmp_path: Path) -> None:
    p = _write(tmp_path, "- a\n- b\n")
    assert _errors(p) == [f"{p}:1: (top level): the file must be a mapping of keys"]


def test_unreadable_file(tmp_path: Path) -> None:
    assert _errors(tmp_path / "absent.yaml") == [
        f"{tmp_path}/absent.yaml: (file): cannot read: No such file or directory"
    ]


@pytest.mark.parametrize(
    ("value", "expected"), [(1024, 1024), ("10MiB", 10 * 1024**2), ("2 kb", 2000), ("7", 7)]
)
def test_sizes(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(30, 30.0), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("250ms", 0.25)],
)
def test_durations(value: object, expected: float) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize("bad", ["ten", "-1s", True, "1 week"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_token_routes_need_an_auth_section(tmp_path: Path) -> None:
    text = MINIMAL.replace(", auth: none}", "}")
    assert _errors(_write(tmp_path, text)) == [
        f"{tmp_path}/gateway.yaml:5: routes[0].auth: route needs a token (the default) but there "
        "is no auth section; add one, or say auth: none for a public route"
    ]
