"""``gateway`` command line: serve, check, demo (more commands join as they land)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from gateway.config import Config, load_config
from gateway.errors import ConfigError
from gateway.runtime import Compiled, compile_config


def run_loop(main: Callable[[], object]) -> None:
    """Run a coroutine function on uvloop when it is installed (faster I/O)."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        runner = asyncio.Runner()
    with runner:
        runner.run(main())  # type: ignore[arg-type]


def _report(exc: ConfigError) -> None:
    for issue in exc.issues:
        print(f"error: {issue}", file=sys.stderr)
    print(f"{len(exc.issues)} error(s) in configuration", file=sys.stderr)


def load_all(path: str) -> tuple[Config, Compiled] | None:
    """gateway.yaml, then every rule file and key source: what serve would load."""
    try:
        config = load_config(path)
        return config, compile_config(config)
    except ConfigError as exc:
        _report(exc)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    loaded = load_all(args.config)
    if loaded is None:
        return 1
    config, compiled = loaded
    policies = len(compiled.rules.policies) if compiled.rules is not None else 0
    print(
        f"ok: {args.config}: {len(config.routes)} routes, {len(config.upstreams)} upstreams, "
        f"{policies} policies, levels {', '.join(compiled.levels)}, "
        f"rules version {compiled.version}"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import serve

    loaded = load_all(args.config)
    if loaded is None:
        return 1
    config, compiled = loaded
    run_loop(lambda: serve(config, compiled))
    return 0


def _json_object(text: str, what: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        print(f"error: {what}: not valid JSON ({exc.msg} at position {exc.pos})", file=sys.stderr)
        return None
    if not isinstance(value, dict):
        print(f"error: {what}: must be a JSON object", file=sys.stderr)
        return None
    return value


def cmd_token(args: argparse.Namespace) -> int:
    from gateway.auth.devtoken import mint_for_config
    from gateway.demo.run import DEMO_CONFIG, find_rules

    claims = _json_object(args.claims, "--claims")
    if claims is None:
        return 1
    env = dict(os.environ)
    if not args.config:
        env.setdefault("GATEWAY_DEMO_RULES", str(find_rules()))
    try:
        config = load_config(args.config or DEMO_CONFIG, env=env)
    except ConfigError as exc:
        _report(exc)
        return 1
    if config.auth is None:
        print(f"error: {config.source}: auth: no auth section to sign for", file=sys.stderr)
        return 1
    try:
        print(mint_for_config(config.auth, claims, lifetime=args.lifetime))
    except ValueError as exc:
        print(f"error: {config.source}: auth.issuers: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo.run import run_demo

    try:
        run_loop(lambda: run_demo(host=args.host, port=args.port, upstream_port=args.upstream_port))
    except ConfigError as exc:
        _report(exc)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("-c", "--config", required=True, help="gateway.yaml")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check", help="validate the configuration and every rule file")
    p.add_argument("-c", "--config", required=True, help="gateway.yaml")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "token",
        help="mint a token with a local development key (the first issuer with hmac_secret_env)",
    )
    p.add_argument("-c", "--config", help="gateway.yaml (default: the demo's configuration)")
    p.add_argument("--claims", required=True, help='JSON object, e.g. \'{"sub": "t1"}\'')
    p.add_argument("--lifetime", type=int, default=3600, help="seconds until exp (default 3600)")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("demo", help="a demo legacy customer API with the gateway in front")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="gateway port")
    p.add_argument("--upstream-port", type=int, default=9000, help="demo upstream port")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
