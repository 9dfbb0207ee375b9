"""One worker process of ``workers: N`` (``python -m gateway.worker``).

Started by the supervisor (:mod:`gateway.workers`), never by hand: it inherits
the listening sockets (``--listen-fd``), loads ``gateway.yaml`` and the rules
itself, serves :class:`gateway.server.Gateway` on those sockets, serves its admin
app on the private control socket (``--control``) with the token from
:data:`CONTROL_TOKEN_ENV`, and writes :data:`READY_MARK` on ``--ready-fd``.
SIGTERM drains it, SIGHUP reloads it; it ignores SIGINT (the supervisor's) and
drains by itself when the supervisor (``--parent``) is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any, Final

from gateway.config import Config

log = logging.getLogger("gateway.workers")

#: Environment variable carrying the supervisor's control token to its workers.
CONTROL_TOKEN_ENV: Final = "GATEWAY_CONTROL_TOKEN"
READY_MARK: Final = b"ready\n"


async def _serve_worker(
    config: Config,
    compiled: Any,
    sockets: Sequence[socket.socket],
    control: tuple[str, str],
    ready_fd: int,
    parent: int,
) -> None:
    from gateway.control import reload
    from gateway.server import Gateway

    gateway = Gateway(config, compiled)
    await gateway.start(sockets=sockets, control=control)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(reload(gateway)))
    os.write(ready_fd, READY_MARK)
    os.close(ready_fd)

    async def orphaned() -> None:
        while not stop.is_set():
            if os.getppid() != parent:
                log.warning("the supervisor is gone: draining")
                stop.set()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    watch = asyncio.create_task(orphaned())
    try:
        await stop.wait()
    finally:
        watch.cancel()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await gateway.stop()


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of one worker (started by the supervisor, never by hand)."""
    parser = argparse.ArgumentParser(prog="python -m gateway.worker")
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--slot", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, action="append", required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--control", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s %(name)s [worker {args.slot} pid %(process)d]: "
        "%(message)s",
        stream=sys.stderr,
    )
    token = os.environ.pop(CONTROL_TOKEN_ENV, "")
    if not token:
        print("error: python -m gateway.worker is started by `gateway serve`", file=sys.stderr)
        return 2
    from gateway.cli import load_all, run_loop

    loaded = load_all(args.config)
    if loaded is None:
        return 1
    config, compiled = loaded
    sockets = [socket.socket(fileno=fd) for fd in args.listen_fd]
    from gateway.allocator import tune_malloc

    tune_malloc()
    run_loop(
        lambda: _serve_worker(
            config, compiled, sockets, (args.control, token), args.ready_fd, args.parent
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
