"""``make bench``: the project's own performance measurements (never run by ``make test``).

Each server runs in its own process (the demo upstream; the gateway in front
of it) and the load generator in this one, so each gets a core of its own as
far as this 2-core machine allows. Results are printed, not asserted: targets
live in the issues and are compared by a person.

Sections:
- proxy: requests/s and p50/p99 latency against the demo upstream directly and
  through the gateway on a pass-through route, and the ratio.
- masking (when the rules engine is present): CPU per response and peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


@contextmanager
def _process(
    args: list[str], port: int, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        _wait_port(port)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def _load(
    url: str, seconds: float, concurrency: int, headers: dict[str, str] | None = None
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)

    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{url} answered {resp.status}")
                latencies.append(time.perf_counter() - t0)

        # Warm up connections and caches before measuring.
        async with session.get(url) as resp:
            await resp.read()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


BENCH_SECRET = "bench-only-signing-key-0123456789abcdef0123456789"
ROOT = Path(__file__).resolve().parents[1]


def _stats(prefix: str, rps: float, lat: list[float]) -> dict[str, float]:
    return {
        f"{prefix}_rps": rps,
        f"{prefix}_p50_ms": _pct(lat, 0.50),
        f"{prefix}_p99_ms": _pct(lat, 0.99),
    }


def _bench_rules(tmp: Path) -> Path:
    """The shipped pack with its quota raised: the bench measures the cost of counting,
    and must not be refused by the very quota it exercises."""
    rules = tmp / "rules"
    shutil.copytree(ROOT / "rules", rules)
    pack = rules / "customer.yaml"
    text = pack.read_text(encoding="utf-8")
    text = text.replace("max_records: 500", "max_records: 1000000000")
    pack.write_text(text.replace("max_distinct: 100", "max_distinct: 1000000000"), "utf-8")
    return rules


def _gateway_yaml(
    gw_port: int, up_port: int, masked: bool, rules: Path, redis_url: str | None = None
) -> str:
    head = (
        f"listen: 127.0.0.1:{gw_port}\nupstreams: {{demo: {{url: 'http://127.0.0.1:{up_port}'}}}}\n"
    )
    if not masked:
        return (
            head
            + "routes: [{name: pass, path: '/**', methods: [GET], upstream: demo, auth: none}]\n"
        )
    return head + (
        "auth: {issuers: [{issuer: bench, audience: gw, hmac_secret_env: BENCH_SECRET,"
        " algorithms: [HS256]}]}\n"
        f"rules: {rules}\n"
        "routes:\n"
        "  - {name: page, path: /api/customers, methods: [GET], upstream: demo, policy: customer}\n"
        "  - {name: one, path: '/api/customers/*', methods: [GET], upstream: demo,"
        " policy: customer, records: {path: $.data, id: id}}\n"
        + (f"state: {{redis: '{redis_url}', on_failure: closed}}\n" if redis_url else "")
    )


@contextmanager
def _redis() -> Iterator[str | None]:
    """A private redis-server for the run (None when the binary is missing)."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = _free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with _process(args, port):
        yield f"redis://127.0.0.1:{port}/0"


def bench_proxy(seconds: float, concurrency: int, paths: list[str]) -> dict[str, dict[str, float]]:
    """Each path directly, through a pass-through route, and through a masked route (a
    confidential caller, the shipped rule pack, its quota) with in-memory and with Redis
    state: one gateway process at a time."""
    from gateway.auth.devtoken import mint_token

    up_port = _free_port()
    token = mint_token(
        {"sub": "bench", "clearance": "confidential"},
        BENCH_SECRET.encode(),
        issuer="bench",
        audience="gw",
    )
    env = {**os.environ, "BENCH_SECRET": BENCH_SECRET, "GATEWAY_HASH_KEY": "bench-hash-key"}
    py = sys.executable
    upstream = [py, "-m", "gateway.demo.upstream", "--host", "127.0.0.1", "--port", str(up_port)]
    results: dict[str, dict[str, float]] = {p: {} for p in paths}
    with tempfile.TemporaryDirectory() as tmp, _process(upstream, up_port), _redis() as redis_url:
        for path in paths:
            direct = asyncio.run(_load(f"http://127.0.0.1:{up_port}{path}", seconds, concurrency))
            results[path] |= _stats("direct", *direct)
        modes: list[tuple[str, bool, str | None]] = [("pass", False, None), ("masked", True, None)]
        if redis_url is not None:
            modes.append(("redis", True, redis_url))
        for mode, masked, state in modes:
            gw_port = _free_port()
            cfg = Path(tmp) / f"{mode}.yaml"
            yaml_text = _gateway_yaml(
                gw_port, up_port, masked, _bench_rules(Path(tmp) / mode), state
            )
            cfg.write_text(yaml_text, encoding="utf-8")
            headers = {"Authorization": f"Bearer {token}"} if masked else None
            with _process([py, "-m", "gateway", "serve", "-c", str(cfg)], gw_port, env):
                for path in paths:
                    url = f"http://127.0.0.1:{gw_port}{path}"
                    results[path] |= _stats(
                        mode, *asyncio.run(_load(url, seconds, concurrency, headers))
                    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway.bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", 5)))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--path",
        action="append",
        help="paths to load (default: one customer, and a 20-record page)",
    )
    args = parser.parse_args(argv)
    paths = args.path or ["/api/customers/1", "/api/customers?page=1&size=20"]

    print(f"proxy: {args.concurrency} connections, {args.seconds:g} s per measurement")
    for path, r in bench_proxy(args.seconds, args.concurrency, paths).items():
        print(f"  GET {path}")
        for mode in ("direct", "pass", "masked", "redis"):
            if mode + "_rps" not in r:
                continue
            print(
                f"    {mode:7s} {r[mode + '_rps']:8.0f} req/s  p50 {r[mode + '_p50_ms']:6.2f} ms"
                f"  p99 {r[mode + '_p99_ms']:6.2f} ms  ({r[mode + '_rps'] / r['direct_rps']:.2f}x)"
            )

        if "redis_rps" in r:
            cost = 1 - r["redis_rps"] / r["masked_rps"]
            print(f"    quota state in Redis costs {cost:.0%} of masked throughput (target <= 15%)")

    from gateway.rules.bench import bench_masking

    print("masking (CPU per response, shipped rule pack):")
    for name, value in bench_masking().items():
        print(f"  {name:48s} {value:12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
