"""``make bench``: the project's own performance measurements (never run by ``make test``).

What runs, each in its own process:

- a bench upstream serving customer responses of about 0.5 KB (one record),
  10 KB (a page), 1 MB and 25 MB (lists), and a generated array of any size;
- (a) ``direct``: the load generator against the upstream;
- (b) ``floor``: a bare aiohttp pass-through proxy (in this file): the floor any
  Python gateway stands on;
- (c) ``pass``: the gateway on a pass-through route;
- (d) ``masked``: the gateway on a masked route with everything on: an RS256
  token, the shipped rule pack with its quota (raised so the bench is not
  refused), audit to a file, metrics; and ``redis``: the same with quota state
  in a private redis-server.

The proxy under test is pinned to CPU 1, the upstream and the load generator to
CPU 0 (``taskset``, when there are two cores). The load generator is ``wrk``
when installed, else a Python one. Printed per size and mode: requests/s,
p50/p99 latency, CPU microseconds per request of the proxy process, its peak
RSS, and the ratio to the floor. Then: masking CPU per response and memory
(``gateway.rules.bench``), peak RSS of the gateway while masking a 25 MB body,
and while streaming a 1 GB array (``--stream-mb``).

Results are printed, not asserted: targets live in the issues.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"0.5KB": "/r/one", "10KB": "/r/page", "1MB": "/r/1m"}
MODES = ("direct", "floor", "pass", "masked", "redis")


# -- processes ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def _cpus() -> tuple[list[str], list[str]]:
    """taskset prefixes: (proxy under test, upstream and load generator)."""
    if shutil.which("taskset") and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", "1"], ["taskset", "-c", "0"]
    return [], []


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
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (and its reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int, key: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


# -- the bench upstream and the floor ----------------------------------------------------------
def _bodies() -> dict[str, bytes]:
    import orjson

    from gateway.rules.bench import _response, customers

    records = customers(2000)
    one = orjson.loads(_response(records[:1]))["data"][0]
    page = _response(records[:12])
    big = _response(records[: int(2000 * 1_000_000 / len(_response(records)))])
    huge = _response(records * 16)
    return {
        "/r/one": orjson.dumps({"data": one}),
        "/r/page": page,
        "/r/1m": big,
        "/r/25m": huge,
    }


def serve_upstream(port: int) -> None:
    import orjson

    from gateway.rules.bench import _response, customers

    bodies = _bodies()
    record = _response(customers(200))
    start = record.index(b"[") + 1
    chunk = record[start : record.rindex(b"]")]  # 200 records, comma-separated

    async def fixed(request: web.Request) -> web.Response:
        return web.Response(body=bodies[request.path], content_type="application/json")

    async def stream(request: web.Request) -> web.StreamResponse:
        """A generated array of about ``mb`` megabytes, chunked."""
        total = int(float(request.query.get("mb", "1")) * 1_000_000)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b'{"page":1,"data":[' + chunk)
        sent = len(chunk)
        while sent < total:
            await resp.write(b"," + chunk)
            sent += len(chunk) + 1
        await resp.write(b'],"total":' + orjson.dumps(sent) + b"}")
        await resp.write_eof()
        return resp

    app = web.Application()
    for path in bodies:
        app.router.add_get(path, fixed)
    app.router.add_get("/r/stream", stream)
    _run_app(app, port)


def serve_floor(port: int, upstream: str) -> None:
    """The bare proxy: forward the GET, read the body, answer it. Nothing else."""

    async def startup(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(auto_decompress=False)

    async def cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.Response:
        async with request.app["session"].get(upstream + request.path_qs) as up:
            body = await up.read()
            return web.Response(body=body, status=up.status, content_type=up.content_type or None)

    app = web.Application()
    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    app.router.add_get("/{tail:.*}", forward)
    _run_app(app, port)


def _run_app(app: web.Application, port: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# -- load --------------------------------------------------------------------------------------
_WRK_LAT = re.compile(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def _wrk(url: str, seconds: float, conns: int, headers: dict[str, str], pin: list[str]) -> Any:
    args = [*pin, "wrk", "-t1", f"-c{conns}", f"-d{max(1, int(seconds))}s", "--latency"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    lat = {p: float(v) * scale[u] for p, v, u in _WRK_LAT.findall(out)}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise RuntimeError(f"{url}: {bad.group(1)} error responses")
    return rps, lat.get("50", 0.0), lat.get("99", 0.0), total


async def _pyload(
    url: str, seconds: float, conns: int, headers: dict[str, str]
) -> tuple[float, float, float, int]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=conns)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                async with session.get(url) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{url} answered {resp.status}")
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conns)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [0.0]

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000

    return len(latencies) / elapsed, pct(0.5), pct(0.99), len(latencies)


def _load(url: str, seconds: float, conns: int, headers: dict[str, str], pin: list[str]) -> Any:
    async def warm() -> None:  # connections, caches, the plan cache
        async with aiohttp.ClientSession(headers=headers) as s:
            for _ in range(3):
                async with s.get(url) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{url} answered {r.status}")

    asyncio.run(warm())
    if shutil.which("wrk"):
        return _wrk(url, seconds, conns, headers, pin)
    return asyncio.run(_pyload(url, seconds, conns, headers))


# -- configurations ------------------------------------------------------------------------------
def _keys(tmp: Path) -> tuple[Path, str]:
    """An RS256 key pair for the run: the gateway gets the public key file."""
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = tmp / "bench-key.pem"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    now = int(time.time())
    claims = {
        "iss": "bench",
        "aud": "gw",
        "sub": "bench",
        "clearance": "confidential",
        "iat": now,
        "exp": now + 3600,
    }
    return pub, jwt.encode(claims, key, algorithm="RS256")


def _rules(tmp: Path) -> Path:
    """The shipped pack with its quota raised: the bench measures the cost of counting,
    and must not be refused by the very quota it exercises."""
    rules = tmp / "rules"
    shutil.copytree(ROOT / "rules", rules)
    pack = rules / "customer.yaml"
    text = pack.read_text(encoding="utf-8")
    text = text.replace("max_records: 500", "max_records: 1000000000")
    pack.write_text(text.replace("max_distinct: 100", "max_distinct: 1000000000"), "utf-8")
    return rules


def _gateway_yaml(tmp: Path, mode: str, port: int, up: int, pub: Path, redis: str | None) -> Path:
    lines = [
        f"listen: 127.0.0.1:{port}",
        f"upstreams: {{demo: {{url: 'http://127.0.0.1:{up}', timeout: 120}}}}",
    ]
    if mode == "pass":
        lines.append(
            "routes: [{name: pass, path: '/**', methods: [GET], upstream: demo, auth: none}]"
        )
    else:
        lines += [
            f"admin_listen: 127.0.0.1:{_free_port()}",
            "auth:",
            "  issuers: [{issuer: bench, audience: gw, algorithms: [RS256],"
            f" public_key_file: '{pub}'}}]",
            f"rules: '{_rules(tmp / mode)}'",
            f"audit: [{{file: '{tmp / mode / 'audit.jsonl'}'}}]",
            "routes:",
            "  - {name: one, path: /r/one, methods: [GET], upstream: demo, policy: customer,"
            " records: {path: $.data, id: id}}",
            "  - {name: list, path: '/r/**', methods: [GET], upstream: demo, policy: customer}",
        ]
        if mode == "redis" and redis is not None:
            lines.append(f"state: {{redis: '{redis}', on_failure: closed}}")
    cfg = tmp / f"{mode}.yaml"
    cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return cfg


@contextmanager
def _redis(pin: list[str]) -> Iterator[str | None]:
    """A private redis-server for the run (None when the binary is missing), pinned with
    the load generator: it stands for a separate server, not for the gateway's core."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = _free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    with _process([*pin, *args], port):
        yield f"redis://127.0.0.1:{port}/0"


# -- the run -------------------------------------------------------------------------------------
def bench(seconds: float, conns: int, stream_mb: float) -> dict[str, Any]:
    py = sys.executable
    proxy_pin, other_pin = _cpus()
    env = {**os.environ, "GATEWAY_HASH_KEY": "bench-hash-key"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    results: dict[str, Any] = {"rows": [], "generator": "wrk" if shutil.which("wrk") else "python"}
    up_port = _free_port()
    upstream = [*other_pin, py, "-m", "gateway.bench", "--serve-upstream", str(up_port)]
    with (
        tempfile.TemporaryDirectory() as td,
        _process(upstream, up_port),
        _redis(other_pin) as redis,
    ):
        tmp = Path(td)
        pub, token = _keys(tmp)
        for mode in MODES:
            if mode == "redis" and redis is None:
                continue
            if mode == "direct":
                ctx: Any = _nothing(up_port)
            elif mode == "floor":
                port = _free_port()
                args = [*proxy_pin, py, "-m", "gateway.bench", "--serve-floor", str(port)]
                ctx = _process([*args, f"http://127.0.0.1:{up_port}"], port, env)
            else:
                port = _free_port()
                cfg = _gateway_yaml(tmp, mode, port, up_port, pub, redis)
                ctx = _process(
                    [*proxy_pin, py, "-m", "gateway", "serve", "-c", str(cfg)], port, env
                )
            headers = {"Authorization": f"Bearer {token}"} if mode in ("masked", "redis") else {}
            with ctx as proc:
                port = up_port if mode == "direct" else port
                sizes = SIZES if mode != "redis" else {"0.5KB": SIZES["0.5KB"]}
                for size, path in sizes.items():
                    pid = proc.pid if proc is not None else None
                    cpu0 = _proc_cpu(pid) if pid else 0.0
                    url = f"http://127.0.0.1:{port}{path}"
                    # the load generator takes the proxy's core when there is no proxy
                    pin = proxy_pin if mode == "direct" else other_pin
                    rps, p50, p99, n = _load(url, seconds, conns, headers, pin)
                    cpu = (_proc_cpu(pid) - cpu0) / max(n, 1) * 1e6 if pid else None
                    rss = _rss_mb(pid) if pid else None
                    results["rows"].append(
                        {
                            "size": size,
                            "mode": mode,
                            "rps": rps,
                            "p50": p50,
                            "p99": p99,
                            "cpu_us": cpu,
                            "rss_mb": rss,
                        }
                    )
        # Memory, each in a fresh gateway process so its peak RSS is this body's alone.
        headers = {"Authorization": f"Bearer {token}"}
        for name in ("huge", "stream"):
            port = _free_port()
            cfg = _gateway_yaml(tmp, name, port, up_port, pub, None)
            args = [*proxy_pin, py, "-m", "gateway", "serve", "-c", str(cfg)]
            with _process(args, port, env) as proc:
                _load(f"http://127.0.0.1:{port}/r/one", 1, 2, headers, other_pin)
                if name == "huge":
                    results[name] = _huge(port, headers, proc.pid)
                else:
                    results[name] = _stream(port, headers, proc.pid, stream_mb)
    return results


@contextmanager
def _nothing(port: int) -> Iterator[None]:
    yield None


def _huge(port: int, headers: dict[str, str], pid: int) -> dict[str, float]:
    """Peak RSS of the gateway above idle while masking the 25 MB body."""

    async def fetch() -> int:
        async with (
            aiohttp.ClientSession(headers=headers) as s,
            s.get(f"http://127.0.0.1:{port}/r/25m") as r,
        ):
            return len(await r.read())

    idle = _rss_mb(pid, "VmRSS")
    size = asyncio.run(fetch())
    return {"idle_mb": idle, "peak_mb": _rss_mb(pid), "masked_bytes": size}


def _stream(port: int, headers: dict[str, str], pid: int, mb: float) -> dict[str, float]:
    """A generated array of ``mb`` megabytes through the masked route: peak RSS and time."""

    async def fetch() -> int:
        timeout = aiohttp.ClientTimeout(total=None)
        async with (
            aiohttp.ClientSession(headers=headers, timeout=timeout) as s,
            s.get(f"http://127.0.0.1:{port}/r/stream?mb={mb}") as r,
        ):
            n = 0
            async for chunk in r.content.iter_chunked(1 << 16):
                n += len(chunk)
            return n

    idle = _rss_mb(pid, "VmRSS")
    t0 = time.perf_counter()
    size = asyncio.run(fetch())
    return {
        "upstream_mb": mb,
        "seconds": time.perf_counter() - t0,
        "idle_mb": idle,
        "peak_mb": _rss_mb(pid),
        "masked_bytes": size,
    }


def report(results: dict[str, Any]) -> str:
    rows = results["rows"]
    floor = {r["size"]: r["rps"] for r in rows if r["mode"] == "floor"}
    masked = {r["size"]: r["rps"] for r in rows if r["mode"] == "masked"}
    out = [
        f"make bench, {dt.date.today().isoformat()}, load generator: {results['generator']}",
        "",
        "| size | mode | req/s | p50 ms | p99 ms | CPU us/req | peak RSS MB | vs floor |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = r["rps"] / floor[r["size"]] if r["size"] in floor else 0.0
        cpu = f"{r['cpu_us']:.0f}" if r["cpu_us"] is not None else "-"
        rss = f"{r['rss_mb']:.0f}" if r["rss_mb"] is not None else "-"
        out.append(
            f"| {r['size']} | {r['mode']} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f}"
            f" | {cpu} | {rss} | {ratio:.2f}x |"
        )
    cpus: dict[tuple[str, str], float] = {
        (r["mode"], r["size"]): r["cpu_us"] for r in rows if r["cpu_us"] is not None
    }
    extra = [
        f"{size} +{cpus['masked', size] - cpus['pass', size]:.0f} us"
        f" ({cpus['masked', size] / cpus['pass', size]:.2f}x)"
        for size in SIZES
        if ("masked", size) in cpus and cpus.get(("pass", size))
    ]
    if extra:
        # What the masked route's features (token, quotas, masking, audit, metrics) cost
        # on top of the same gateway relaying: the floor ratio's other side.
        out.append("")
        out.append("masked over pass, CPU per request: " + ", ".join(extra))
    redis = [r for r in rows if r["mode"] == "redis"]
    if redis and "0.5KB" in masked:
        out.append("")
        out.append(
            f"quota state in Redis: {redis[0]['rps'] / masked['0.5KB']:.2f}x the in-memory"
            " backend on the 0.5 KB masked response (target >= 0.85x)"
        )
    if "huge" in results:
        h = results["huge"]
        over = (h["peak_mb"] - h["idle_mb"]) / 25.0
        out.append(
            f"masking a 25 MB body: gateway peak RSS {h['peak_mb']:.0f} MB, idle {h['idle_mb']:.0f}"
            f" MB: {over:.2f}x the body above idle (target <= 2x)"
        )
    if "stream" in results:
        s = results["stream"]
        out.append(
            f"streaming a {s['upstream_mb']:.0f} MB array: {s['seconds']:.1f} s"
            f" ({s['upstream_mb'] / s['seconds']:.0f} MB/s),"
            f" gateway peak RSS {s['peak_mb']:.0f} MB, idle {s['idle_mb']:.0f} MB (target < 100 MB)"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway.bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", 5)))
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--stream-mb", type=float, default=float(os.environ.get("BENCH_STREAM_MB", 1000))
    )
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument(
        "--serve-floor", nargs=2, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return 0
    if args.serve_floor:
        serve_floor(int(args.serve_floor[0]), args.serve_floor[1])
        return 0
    print(report(bench(args.seconds, args.connections, args.stream_mb)), flush=True)

    from gateway.rules.bench import bench_masking

    print("\nmasking (CPU per response, shipped rule pack; the body filter's work alone):")
    for name, value in bench_masking().items():
        print(f"  {name:48s} {value:12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
