"""``HEAD`` on every GET route: answered as the GET would be, without the body (RFC 9110 §9.3.2).

Uptime monitors and link checkers send HEAD; FastAPI registers GET routes for
GET only, so HEAD was a 405. This ASGI middleware hands the app a GET and
drops the body it sends: status and headers (``Content-Length`` included,
which RFC 9110 allows for HEAD) are the GET's, auth and errors alike.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HeadAsGet"]


class HeadAsGet:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # the last body message ends the response
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)
