"""The benchmark's baseline: the least a Tornado + motor service can do per request.

``POST /insert`` parses a small JSON body and does one motor ``insert_one`` of a small
document into its own collection of the same database the cashout server uses, then answers
a small JSON. ``GET /hello`` answers a constant (no database): the ceiling the load
generator is checked against. Same Tornado, same motor, same event loop policy as the
service, so the difference between the two is the service's own work.

    python bench/baseline_server.py --port P --mongodb-uri URI --db-name NAME
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from datetime import UTC, datetime

import tornado.web
from motor.motor_asyncio import AsyncIOMotorClient
from tornado.httpserver import HTTPServer


class InsertHandler(tornado.web.RequestHandler):
    def initialize(self, collection) -> None:  # type: ignore[no-untyped-def]
        self.collection = collection

    async def post(self) -> None:
        body = json.loads(self.request.body)
        doc = {"ref": body.get("id"), "amount": body.get("amount"), "created_at": datetime.now(UTC)}
        result = await self.collection.insert_one(doc)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_status(201)
        self.finish(json.dumps({"result": str(result.inserted_id)}))


class HelloHandler(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(b'{"hello":"world"}')


async def serve(port: int, uri: str, db_name: str) -> None:
    client: AsyncIOMotorClient = AsyncIOMotorClient(uri, tz_aware=True)
    collection = client[db_name]["docs"]
    await client[db_name].command("ping")
    app = tornado.web.Application(
        [("/insert", InsertHandler, {"collection": collection}), ("/hello", HelloHandler)],
        log_function=lambda handler: None,
    )
    server = HTTPServer(app)
    server.listen(port, "127.0.0.1")
    print(f"baseline listening on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mongodb-uri", required=True)
    parser.add_argument("--db-name", default="bench_baseline")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(serve(args.port, args.mongodb_uri, args.db_name))


if __name__ == "__main__":
    main()
