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
import socket
import statistics
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
def _process(args: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def _load(url: str, seconds: float, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)

    async with aiohttp.ClientSession(connector=connector) as session:

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


def bench_proxy(seconds: float, concurrency: int, path: str) -> dict[str, float]:
    up_port, gw_port = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "gateway.yaml"
        cfg.write_text(
            f"listen: 127.0.0.1:{gw_port}\n"
            f"upstreams: {{demo: {{url: 'http://127.0.0.1:{up_port}'}}}}\n"
            "routes: [{name: pass, path: '/**', methods: [GET], upstream: demo}]\n",
            encoding="utf-8",
        )
        py = sys.executable
        upstream = [
            py,
            "-m",
            "gateway.demo.upstream",
            "--host",
            "127.0.0.1",
            "--port",
            str(up_port),
        ]
        with (
            _process(upstream, up_port),
            _process([py, "-m", "gateway", "serve", "-c", str(cfg)], gw_port),
        ):
            direct_rps, direct = asyncio.run(
                _load(f"http://127.0.0.1:{up_port}{path}", seconds, concurrency)
            )
            via_rps, via = asyncio.run(
                _load(f"http://127.0.0.1:{gw_port}{path}", seconds, concurrency)
            )
    return {
        "direct_rps": direct_rps,
        "direct_p50_ms": _pct(direct, 0.50),
        "direct_p99_ms": _pct(direct, 0.99),
        "gateway_rps": via_rps,
        "gateway_p50_ms": _pct(via, 0.50),
        "gateway_p99_ms": _pct(via, 0.99),
        "ratio": via_rps / direct_rps,
        "added_p50_ms": _pct(via, 0.50) - statistics.median(direct) * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway.bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", 5)))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--path", default="/api/customers/1")
    args = parser.parse_args(argv)

    print(f"proxy: GET {args.path}, {args.concurrency} connections, {args.seconds:g} s each")
    r = bench_proxy(args.seconds, args.concurrency, args.path)
    print(
        f"  direct   {r['direct_rps']:8.0f} req/s  p50 {r['direct_p50_ms']:6.2f} ms  "
        f"p99 {r['direct_p99_ms']:6.2f} ms"
    )
    print(
        f"  gateway  {r['gateway_rps']:8.0f} req/s  p50 {r['gateway_p50_ms']:6.2f} ms  "
        f"p99 {r['gateway_p99_ms']:6.2f} ms"
    )
    print(f"  ratio    {r['ratio']:.2f} (gateway/direct)  added p50 {r['added_p50_ms']:.2f} ms")

    try:
        from gateway.rules.bench import bench_masking
    except ImportError:
        return 0
    print("masking:")
    for name, value in bench_masking().items():
        print(f"  {name:40s} {value:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
