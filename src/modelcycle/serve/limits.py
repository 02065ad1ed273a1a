"""Body size and body time limits, applied to the raw ASGI stream before any parsing, so a huge
or trickling upload is cut off after at most ``max_bytes`` and ``timeout_s`` whatever the route."""

from __future__ import annotations

import asyncio

from fastapi import HTTPException


class BodyLimits:
    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"").decode("latin-1")
        too_big = HTTPException(413, f"request body is over the limit of {self.max_bytes:,} bytes (serve.max_body_mb)")
        too_big_early = declared.isdigit() and int(declared) > self.max_bytes
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        received = 0
        body_done = False

        async def limited_receive():
            nonlocal received, body_done
            if too_big_early:
                raise too_big  # raised inside the route, so the app's handler turns it into JSON
            if body_done:
                return await receive()  # after the body: the disconnect wait, which has no deadline
            try:
                async with asyncio.timeout_at(deadline):  # unlike wait_for, no task per chunk
                    message = await receive()
            except TimeoutError:
                raise HTTPException(
                    408, f"the request body did not arrive within {self.timeout_s:g} s (serve.body_timeout_s)"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_big
                body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)
