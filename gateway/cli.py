"""``gateway`` command line: serve, check, demo (more commands join as they land)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.config import Config, load_config
from gateway.errors import ConfigError
from gateway.rules import principal_from_claims
from gateway.runtime import Compiled, compile_config
from gateway.types import Principal


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
    if config.workers > 1:
        from gateway.workers import supervise

        # Each worker loads and compiles the files itself; this load only validated them.
        return supervise(config, args.config, verbose=args.verbose)
    from gateway.allocator import tune_malloc

    tune_malloc()
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


def _resolver(compiled: Compiled) -> Callable[[Mapping[str, Any]], Principal] | None:
    """Claims -> Principal exactly as the gateway resolves them (roles included)."""
    return compiled.auth.resolver.principal if compiled.auth is not None else None


def cmd_explain(args: argparse.Namespace) -> int:
    from gateway.explain import explain, render_text
    from gateway.jsoncodec import JsonError, decode

    loaded = load_all(args.config)
    claims = _json_object(args.claims, "--claims")
    if loaded is None or claims is None:
        return 1
    config, compiled = loaded
    route = next((r for r in config.routes if r.name == args.route), None)
    if route is None or route.policy is None or compiled.rules is None:
        why = "no such route" if route is None else "the route has no policy"
        print(f"error: --route {args.route}: {why}", file=sys.stderr)
        return 1
    try:
        document = decode(Path(args.file).read_bytes())
    except OSError as exc:
        print(f"error: {args.file}: cannot read: {exc.strerror}", file=sys.stderr)
        return 1
    except JsonError as exc:
        print(f"error: {args.file}: not strict JSON ({exc.reason})", file=sys.stderr)
        return 1
    resolve = _resolver(compiled)
    principal = (
        resolve(claims)
        if resolve is not None
        else principal_from_claims(claims, compiled.rules.levels)
    )
    print(render_text(explain(compiled.rules, route.policy, principal, document)), end="")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from gateway.rules import load_rules
    from gateway.ruletest import case_files, load_cases, run_cases, summary

    route_policies: dict[str, str | None] = {}
    resolve = None
    if args.config:
        loaded = load_all(args.config)
        if loaded is None:
            return 1
        config, compiled = loaded
        rules = compiled.rules
        if rules is None:
            print(f"error: {args.config}: rules: no rules directory configured", file=sys.stderr)
            return 1
        route_policies = {r.name: r.policy for r in config.routes}
        resolve = _resolver(compiled)
        directory = Path(args.dir) if args.dir else Path(rules.directory)
    else:
        directory = Path(args.dir or "rules")
        rules_dir = directory if (directory / "levels.yaml").is_file() else directory.parent
        try:
            # Cases compare pseudonyms as "<hash>", so any key will do without a config.
            rules = load_rules(
                rules_dir, hash_key=os.environ.get("GATEWAY_HASH_KEY", "test-key").encode()
            )
        except ConfigError as exc:
            _report(exc)
            return 1
    try:
        files = case_files(directory)
        cases = [case for f in files for case in load_cases(f)]
    except ConfigError as exc:
        _report(exc)
        return 1
    except OSError as exc:
        print(f"error: {directory}: cannot read: {exc.strerror}", file=sys.stderr)
        return 1
    if not cases:
        print(f"error: {directory}: no test cases found", file=sys.stderr)
        return 1
    results = run_cases(rules, cases, route_policies, resolve)
    print(summary(results), end="")
    return 0 if all(r.passed for r in results) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo.run import run_demo

    try:
        run_loop(lambda: run_demo(host=args.host, port=args.port, upstream_port=args.upstream_port))
    except ConfigError as exc:
        _report(exc)
        return 1
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from gateway.audit.config import FileSinkConfig, RedisStreamSinkConfig
    from gateway.auditquery import (
        FileSource,
        Filter,
        Source,
        SourceError,
        StreamSource,
        collect,
        parse_time,
        render_table,
        with_backups,
    )

    def usage(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 1

    explicit = bool(args.file or args.redis_stream)
    if args.config and explicit:
        return usage("give -c, or --file/--redis-stream, not both")
    if args.redis_stream and not args.redis_url:
        return usage("--redis-stream needs --redis-url")
    if args.redis_url and not args.redis_stream:
        return usage("--redis-url needs --redis-stream")
    if not args.config and not explicit:
        return usage("no audit source: give -c gateway.yaml, --file or --redis-stream")
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until) if args.until else None
        flt = Filter(args.customer, args.subject, args.route, args.decision, since, until)
    except ValueError as exc:
        return usage(str(exc))
    sources: list[Source] = []
    try:
        if args.config:
            try:
                config = load_config(args.config)
            except ConfigError as exc:
                _report(exc)
                return 1
            for name, spec in config.audit.sinks:
                if isinstance(spec, FileSinkConfig):
                    sources.append(FileSource(tuple(with_backups(config.resolve(spec.file)))))
                elif isinstance(spec, RedisStreamSinkConfig):
                    url = spec.url or config.state.redis
                    if url is None:
                        return usage(f"{args.config}: audit sink {name}: no redis url")
                    sources.append(StreamSource(url, spec.redis_stream))
            if not sources:
                return usage(f"{args.config}: audit: no file or redis_stream sink to read")
        else:
            sources += [FileSource((Path(f),)) for f in args.file or ()]
            sources += [StreamSource(args.redis_url, key) for key in args.redis_stream or ()]
        doc = asyncio.run(collect(sources, flt))
    except SourceError as exc:
        return usage(str(exc))
    if args.format == "json":
        print(json.dumps(doc, indent=2))  # ASCII: no raw bidi/control chars
    else:
        print(render_table(doc), end="")
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
        "explain", help="show a response as a caller would get it, and why each field changed"
    )
    p.add_argument("-c", "--config", required=True, help="gateway.yaml")
    p.add_argument("--route", required=True, help="route name (its policy applies)")
    p.add_argument("--claims", required=True, help="the caller's token claims as JSON")
    p.add_argument("file", help="an upstream response body (JSON)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("test", help="run the rule test cases (exit 1 on a failure)")
    p.add_argument("dir", nargs="?", help="rules directory or its tests/ (default: rules)")
    p.add_argument("-c", "--config", help="gateway.yaml: maps routes to policies, roles")
    p.set_defaults(func=cmd_test)

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

    p = sub.add_parser(
        "audit", help="query the audit trail: who received customer X, what did subject Y see"
    )
    p.add_argument("-c", "--config", help="gateway.yaml: read its file and redis_stream sinks")
    p.add_argument(
        "--file", action="append", help="an audit file, read as given (repeatable, no backups)"
    )
    p.add_argument("--redis-stream", action="append", metavar="KEY", help="stream key (repeatable)")
    p.add_argument("--redis-url", metavar="URL", help="Redis holding --redis-stream")
    p.add_argument("--customer", metavar="ID", help="records whose entities include this id")
    p.add_argument("--subject", help="exact subject")
    p.add_argument("--route", help="exact route name")
    p.add_argument("--decision", help="exact decision (allow, deny_policy, ...)")
    p.add_argument("--since", metavar="TS", help="inclusive: RFC 3339 or YYYY-MM-DD (UTC)")
    p.add_argument("--until", metavar="TS", help="exclusive: RFC 3339 or YYYY-MM-DD (UTC)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(func=cmd_audit)
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
