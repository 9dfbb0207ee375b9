"""``gateway`` command line: serve, check, demo (more commands join as they land)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence

from gateway.config import Config, load_config
from gateway.errors import ConfigError


def run_loop(main: Callable[[], object]) -> None:
    """Run a coroutine function on uvloop when it is installed (faster I/O)."""
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        runner = asyncio.Runner()
    with runner:
        runner.run(main())  # type: ignore[arg-type]


def _load_or_report(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        print(f"{len(exc.issues)} error(s) in configuration", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    config = _load_or_report(args.config)
    if config is None:
        return 1
    print(f"ok: {args.config}: {len(config.routes)} routes, {len(config.upstreams)} upstreams")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.server import serve

    config = _load_or_report(args.config)
    if config is None:
        return 1
    run_loop(lambda: serve(config))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo.run import run_demo

    run_loop(lambda: run_demo(host=args.host, port=args.port, upstream_port=args.upstream_port))
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
