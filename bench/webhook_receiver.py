"""A minimal webhook receiver for the end-to-end benchmark (its own process).

``POST /hook`` records ``time.time()`` on arrival against the payload's ``uuid`` (first
arrival only) and answers ``200 ok`` at once; it does not verify signatures (that is the
provider's cost, not the service's). ``GET /stats`` gives the count, ``GET /dump`` every
``uuid -> arrival time``, ``POST /reset`` forgets everything.

    python bench/webhook_receiver.py --port P
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

import tornado.web
from tornado.httpserver import HTTPServer

ARRIVALS: dict[str, float] = {}
STATE = {"calls": 0}


class HookHandler(tornado.web.RequestHandler):
    def post(self) -> None:
        now = time.time()
        STATE["calls"] += 1
        try:
            uuid = json.loads(self.request.body)["uuid"]
        except (ValueError, KeyError, TypeError):
            uuid = None
        if uuid and uuid not in ARRIVALS:
            ARRIVALS[uuid] = now
        self.finish(b"ok")


class StatsHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        last = max(ARRIVALS.values()) if ARRIVALS else None
        self.finish({"count": len(ARRIVALS), "calls": STATE["calls"], "last": last})


class DumpHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(ARRIVALS))


class ResetHandler(tornado.web.RequestHandler):
    def post(self) -> None:
        ARRIVALS.clear()
        STATE["calls"] = 0
        self.finish(b"ok")


async def serve(port: int) -> None:
    app = tornado.web.Application(
        [
            ("/hook", HookHandler),
            ("/stats", StatsHandler),
            ("/dump", DumpHandler),
            ("/reset", ResetHandler),
        ],
        log_function=lambda handler: None,
    )
    server = HTTPServer(app)
    server.listen(port, "127.0.0.1")
    print(f"receiver listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
