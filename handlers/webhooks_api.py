"""The provider's delivery log and controls for its webhooks (docs/DESIGN.md section 7)."""

from __future__ import annotations

from handlers.base import ApiHandler, Route
from server import validation
from server.views import event_view


class WebhooksHandler(ApiHandler):
    async def get(self, name: str) -> None:
        provider = await self.provider(name)
        events, next_cursor = await self.services.webhooks.list(
            provider,
            status=self.get_query_argument("status", None),
            limit=self.get_query_argument("limit", None),
            after=self.get_query_argument("after", None),
        )
        self.write_json({"events": [event_view(e) for e in events], "next": next_cursor})


class RedeliverHandler(ApiHandler):
    async def post(self, name: str, event_id: str) -> None:
        provider = await self.provider(name)
        validation.check("empty", self.json_body(optional=True))
        event = await self.services.webhooks.redeliver(provider, event_id)
        self.write_json(event_view(event), status=202)


class TestWebhookHandler(ApiHandler):
    async def post(self, name: str) -> None:
        provider = await self.provider(name)
        validation.check("empty", self.json_body(optional=True))
        event = await self.services.webhooks.send_test(provider)
        self.write_json(event_view(event), status=202)


default_handlers: list[Route] = [
    ("/cashout/webhooks/{name}/test", TestWebhookHandler),
    ("/cashout/webhooks/{name}/{event_id}/redeliver", RedeliverHandler),
    ("/cashout/webhooks/{name}", WebhooksHandler),
]
