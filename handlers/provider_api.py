"""The provider JSON API of docs/DESIGN.md section 4."""

from __future__ import annotations

from handlers.base import ApiHandler, Route
from server.errors import invalid
from server.views import audit_view, claim_view, generated_view, provider_view


class RegisterHandler(ApiHandler):
    address_limits = ("register",)

    async def post(self) -> None:
        body = self.json_body()
        self.limit_address("card_check")
        creds = await self.services.providers.register(body, self.caller())
        self.write_json(
            {"result": "ok", "api_key": creds.api_key, "webhook_secret": creds.webhook_secret}
        )


class GenerateHandler(ApiHandler):
    async def post(self, name: str) -> None:
        provider = await self.provider(name)
        generated = await self.services.claims.generate(provider, self.json_body())
        self.write_json(
            generated_view(generated.claim, self.services.claims.claim_url(generated.claim)),
            status=201 if generated.created else 200,
        )


class ClaimHandler(ApiHandler):
    async def get(self, name: str, uuid: str) -> None:
        provider = await self.provider(name)
        claim = await self.services.claims.get(provider, uuid)
        self.write_json(claim_view(claim))


class ClaimsHandler(ApiHandler):
    async def get(self, name: str) -> None:
        provider = await self.provider(name)
        claims = self.services.claims
        ref = self.get_query_argument("id", None)
        if ref is not None:
            if set(self.request.query_arguments) - {"id"}:
                raise invalid("id", "cannot be combined with status, limit or after")
            self.write_json(claim_view(await claims.get_by_ref(provider, ref)))
            return
        page = await claims.list(
            provider,
            status=self.get_query_argument("status", None),
            limit=self.get_query_argument("limit", None),
            after=self.get_query_argument("after", None),
        )
        found, next_cursor = page
        self.write_json({"claims": [claim_view(c) for c in found], "next": next_cursor})


class CancelHandler(ApiHandler):
    async def post(self, name: str, uuid: str) -> None:
        provider = await self.provider(name)
        claim = await self.services.claims.cancel(
            provider, uuid, self.json_body(optional=True), self.caller(provider)
        )
        self.write_json(claim_view(claim))


class ProfileHandler(ApiHandler):
    async def get(self, name: str) -> None:
        provider = await self.provider(name)
        self.write_json(provider_view(provider))

    async def post(self, name: str) -> None:
        provider = await self.provider(name)
        body = self.json_body()
        if "pan" in body:
            self.limit_address("card_check")
        updated = await self.services.providers.update_profile(
            provider, body, self.caller(provider)
        )
        self.write_json({"result": "ok", **provider_view(updated)})


class RotateKeysHandler(ApiHandler):
    async def post(self, name: str) -> None:
        provider = await self.provider(name)
        creds, updated = await self.services.providers.rotate(
            provider, self.json_body(), self.caller(provider)
        )
        body: dict[str, object] = {"result": "ok"}
        if creds.api_key:
            body["api_key"] = creds.api_key
        if creds.webhook_secret:
            body["webhook_secret"] = creds.webhook_secret
            body["webhook_secrets"] = provider_view(updated)["webhook_secrets"]
        self.write_json(body)


class AuditHandler(ApiHandler):
    """``GET /cashout/audit/{name}``: the provider's audit log, newest first."""

    async def get(self, name: str) -> None:
        provider = await self.provider(name)
        entries, next_cursor = await self.services.audit.page(
            provider,
            limit=self.get_query_argument("limit", None),
            after=self.get_query_argument("after", None),
        )
        self.write_json({"entries": [audit_view(e) for e in entries], "next": next_cursor})


default_handlers: list[Route] = [
    ("/cashout/register", RegisterHandler),
    ("/cashout/generate/{name}", GenerateHandler),
    ("/cashout/claims/{name}/{uuid}/cancel", CancelHandler),
    ("/cashout/claims/{name}/{uuid}", ClaimHandler),
    ("/cashout/claims/{name}", ClaimsHandler),
    ("/cashout/profile/{name}", ProfileHandler),
    ("/cashout/keys/{name}/rotate", RotateKeysHandler),
    ("/cashout/audit/{name}", AuditHandler),
]
