"""Calling vLLM's own OpenAI app in process, as a stream of (status, headers, body chunks).

Each engine replica builds the FastAPI app `vllm serve` builds (same routes, request
models, error handlers and SSE streaming, with vllm-pudding's patches) but serves no
socket: the ingress hands it (method, path, headers, body) over Ray and gets the
response back chunk by chunk. So the replicas answer exactly as `vllm serve` would,
bad input included, without this package re-implementing any of the protocol.
(httpx's ASGITransport would buffer a streamed body whole; this yields each chunk.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

Head = tuple[int, list[tuple[str, str]]]


async def call(app, method: str, path: str, headers: list[tuple[str, str]],
               body: bytes) -> AsyncIterator[Head | bytes]:
    """Yields the response head (status, headers) first, then each non-empty body chunk."""
    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": query.encode(), "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80), "state": {}}
    sent = asyncio.Queue()
    disconnected = asyncio.Event()
    request_read = False

    async def receive():
        nonlocal request_read
        if not request_read:
            request_read = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()  # vLLM watches for client disconnects while streaming
        return {"type": "http.disconnect"}

    task = asyncio.create_task(app(scope, receive, sent.put))
    task.add_done_callback(lambda t: sent.put_nowait(None))
    try:
        while True:
            message = await sent.get()
            if message is None:
                task.result()  # re-raises what the app raised
                return
            if message["type"] == "http.response.start":
                yield message["status"], [(k.decode(), v.decode())
                                          for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    return
    finally:
        disconnected.set()
        if not task.done():
            task.cancel()
