"""``python -m simulator.ebs``: the command line, and the server's life from binding its port
to a clean exit on SIGINT or SIGTERM (the package docstring describes the flags and files)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

import tornado.httpserver
import tornado.netutil

from simulator.bank import Bank
from simulator.ebs.app import base_path, make_app
from simulator.ebs.keys import KeyState
from simulator.ebs.state import KEY_FILE, LEDGER_FILE, SimState

log = logging.getLogger("simulator.ebs")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulator.ebs",
        description="EBS consumer API simulator over a SQLite ledger (sandbox and tests only).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8181, help="0 picks a free port")
    parser.add_argument("--data-dir", required=True, help="ledger and RSA key live here")
    parser.add_argument(
        "--key-bits",
        type=int,
        default=2048,
        help="size of a newly generated key (ignored when DATA_DIR has one)",
    )
    parser.add_argument(
        "--application-id",
        action="append",
        dest="application_ids",
        help="accepted applicationId (repeatable; default ACTSCon)",
    )
    parser.add_argument(
        "--slow-seconds",
        type=float,
        default=5.0,
        help="how long magic 0091/0092 transfers take to answer",
    )
    parser.add_argument(
        "--reply-delay",
        type=float,
        default=0.0,
        help="seconds every getPublicKey and doCardTransfer answer waits (transfers are "
        "applied at once): a slow switch",
    )
    parser.add_argument("--base-path", default="/consumer/")
    parser.add_argument(
        "--max-clock-skew",
        type=float,
        default=300.0,
        help="seconds tranDateTime may differ from now",
    )
    parser.add_argument("--datetime-format", default="%d%m%y%H%M%S")
    parser.add_argument("--timezone", default="Africa/Khartoum")
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    return args


async def serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; print the one ready line on stdout once listening."""
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    state = SimState(
        bank=Bank(data_dir / LEDGER_FILE),
        keys=KeyState.load_or_create(data_dir / KEY_FILE, args.key_bits),
        application_ids=frozenset(args.application_ids or ["ACTSCon"]),
        slow_seconds=args.slow_seconds,
        reply_delay=args.reply_delay,
        max_clock_skew=args.max_clock_skew,
        datetime_format=args.datetime_format,
        zone=ZoneInfo(args.timezone),
    )
    base = base_path(args.base_path)
    ssl_context = None
    if args.tls_cert:
        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    server = tornado.httpserver.HTTPServer(make_app(state, base), ssl_options=ssl_context)
    sockets = tornado.netutil.bind_sockets(args.port, args.host)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host = f"[{args.host}]" if ":" in args.host else args.host
    scheme = "https" if ssl_context else "http"
    print(f"simulator listening on {scheme}://{host}:{port}{base}", flush=True)
    log.info(
        "key %d bits, application ids %s",
        state.keys.bits,
        ", ".join(sorted(state.application_ids)),
    )
    await stop.wait()
    log.info("simulator stopping")
    server.stop()
    state.shutting_down.set()
    await asyncio.sleep(0.1)  # let slow (0091/0092) replies that were woken up go out
    try:
        await asyncio.wait_for(server.close_all_connections(), 5)
    except TimeoutError:
        log.warning("connections still open at shutdown")
    state.bank.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
