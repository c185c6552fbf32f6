"""The HTTP client the server hands to gateways (``gateways.base.HttpClient``), on Tornado's
``AsyncHTTPClient``: verified TLS, no redirects, and every failure returned as a value."""

from __future__ import annotations

import asyncio

from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from gateways.base import HttpReply


class TornadoHttpClient:
    def __init__(self, max_clients: int = 64) -> None:
        self._max_clients = max_clients
        self._client: AsyncHTTPClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> AsyncHTTPClient:
        """One client per event loop, our own instance so ``close`` cannot break others."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client = AsyncHTTPClient(force_instance=True, max_clients=self._max_clients)
            self._loop = loop
        return self._client

    async def post_json(
        self,
        url: str,
        body: bytes,
        *,
        connect_timeout: float,
        request_timeout: float,
        ca_file: str | None,
    ) -> HttpReply:
        request = HTTPRequest(
            url,
            method="POST",
            body=body,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            validate_cert=True,
            ca_certs=ca_file or None,
            follow_redirects=False,
        )
        try:
            response = await self._http().fetch(request, raise_error=False)
        except Exception as exc:  # any network failure is a value for the gateway to judge
            detail, name = str(exc)[:200], type(exc).__name__
            return HttpReply(None, problem=f"{name}: {detail}" if detail else name)
        return HttpReply(
            response.code, response.headers.get("Content-Type", ""), response.body or b""
        )

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._loop = None
