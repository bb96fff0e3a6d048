"""The ASGI guard in front of ``pcam serve``'s kserve app: model name, content type and body size.

Kept out of :mod:`pcam.serve` so that module stays about the model; plain ASGI, so it
depends on nothing but the standard library.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

log = logging.getLogger(__name__)


_MODEL_PATH = re.compile(r"^/v[12]/models/([^/:]+)")


class RequestGuard:
    """ASGI guard in front of kserve's app: model name, content type and body size of POST requests.

    A request to a model this server does not serve is a 400 naming the one it does
    (kserve alone answers 404 without saying which names exist). A declared
    Content-Length over the limit is refused before the body is read; a chunked body is
    counted as it arrives and refused when it crosses the limit.
    """

    def __init__(self, app: Any, max_body: int, model_name: str | None = None) -> None:
        """Guard ``app``: bodies up to ``max_body`` bytes, requests for ``model_name`` only (when given)."""
        self.app = app
        self.max_body = max_body
        self.model_name = model_name

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Check a POST request's model, content type and size, then pass it to the app."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        asked = _MODEL_PATH.match(scope.get("path", ""))
        if self.model_name and asked and asked.group(1) != self.model_name:
            return await _json_error(
                send, 400, f"unknown model {asked.group(1)!r}; this server serves {self.model_name!r}"
            )
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
        allowed = {"application/json"}
        if ctype and ctype not in allowed:
            return await _json_error(
                send, 400, f"content type {ctype!r} not accepted here; send {' or '.join(sorted(allowed))}"
            )
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            return await _json_error(send, 400, "invalid Content-Length")
        if declared > self.max_body:
            return await _json_error(
                send, 413, f"request body of {declared} bytes exceeds the {self.max_body}-byte limit"
            )
        received = 0
        started = refused = False

        async def counted_receive() -> dict:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body and not refused:
                    # Answer now and tell the app the client left: it stops reading, and
                    # whatever it tries to send after that is dropped by watched_send.
                    refused = True
                    if not started:
                        await _json_error(send, 413, f"request body exceeds the {self.max_body}-byte limit")
                    return {"type": "http.disconnect"}
            return message

        async def watched_send(message: dict) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except Exception:
            if not refused:
                raise
            log.info("refused a chunked body over %d bytes", self.max_body)


async def _json_error(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
