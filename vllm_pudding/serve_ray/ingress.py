"""The OpenAI-compatible ingress: decides each prompt's set, then the replica, then resends.

Per request to /v1/completions or /v1/chat/completions:
1. A body vllm-pudding cannot read (bad JSON, bad `pudding_*` keys, ...) goes unchanged to
   a replica, whose `vllm serve` app answers it: the same 4xx, word for word.
2. The set: `pudding_set` when pinned; else the routing workers' choice (on the prompt text;
   for a hidden router, on the token ids the engine would read: a token-id prompt as sent, a
   chat as the replicas render it); else the default set.
   A routed request is pinned to its set for the replica and reported back with
   `pudding_routed: true`, as `vllm serve` reports its own routing. A completions request
   with several routed prompts is split into one request per prompt (each may belong to
   another replica group) and the answers are merged in prompt order.
3. The replica: `SetAffineDispatcher` (dispatch/policy.py) picks the least-loaded replica
   of the set's group from the ingress's own in-flight counts. Each replica is its own
   Serve deployment (one engine each, pinned to its own cores), so the ingress holds one
   handle per replica and chooses it directly. With the app's `routing="serve"` (a
   set-blind baseline) the replicas are one deployment behind one handle, and Ray Serve's
   default request router picks instead.
4. Faults: a replica that fails (killed, engine dead) is marked down, probed until Serve
   has restarted it, and everything it had in flight is resent to another replica:
   non-streamed responses are buffered here, so a resend is invisible to the client; a
   stream is resent when nothing of it reached the client yet, else it ends with an error
   event. With no replica up for `unavailable_wait_s`, the answer is 503 with Retry-After.
   A routing worker that fails is retried (Serve sends the retry to another worker or the
   restarted one) and after `route_retries` the ingress routes the prompt itself.
"""

from __future__ import annotations

import asyncio
import json
import time
import types
from collections import Counter
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

app = FastAPI()

_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


class ReplicaUnavailable(Exception):
    """No replica came up within the wait."""


def _replica_failures() -> tuple[type[BaseException], ...]:
    from ray import exceptions as rex

    found = [rex.RayActorError, getattr(rex, "ActorUnavailableError", None),
             getattr(rex, "ActorDiedError", None)]
    try:
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
        found += [BackPressureError, DeploymentUnavailableError]
    except ImportError:
        pass
    return tuple(e for e in found if e is not None)


# Helpers come before the class: serve.ingress pickles the app's routes when the class
# is decorated, so module globals defined after it would be missing in the replica.

def _path(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def _response_headers(headers) -> dict:
    return {k: v for k, v in headers if k.lower() not in _HOP_HEADERS}


def _wants_stream(raw: bytes) -> bool:
    try:
        data = json.loads(raw)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("stream") is True


def _is_ids(prompt) -> bool:
    return isinstance(prompt, list) and bool(prompt) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt)


def _pinned_body(data: dict, set_id: int) -> bytes:
    return json.dumps({**data, "vllm_xargs": {**(data.get("vllm_xargs") or {}),
                                              "pudding_set": set_id}}).encode()


def _mark_routed(out: bytes, chat: bool) -> bytes:
    data = json.loads(out)
    if chat:
        data["pudding_routed"] = True
    else:
        data["pudding_routed"] = [True] * len(data.get("pudding_sets") or [])
    return json.dumps(data).encode()


class _SseRewriter:
    """Marks streamed events of a routed request `pudding_routed: true` (chunks may split
    events, so whole events are rewritten as they complete)."""

    def __init__(self, chat: bool):
        self.chat, self.buffer = chat, b""

    def feed(self, chunk: bytes) -> bytes:
        self.buffer += chunk
        *events, self.buffer = self.buffer.split(b"\n\n")
        return b"".join(self._event(e) + b"\n\n" for e in events)

    def _event(self, event: bytes) -> bytes:
        if not event.startswith(b"data: {"):
            return event
        data = json.loads(event[len(b"data: "):])
        if self.chat and "pudding_set" in data:
            data["pudding_routed"] = True
        for choice in data.get("choices") or []:
            if not self.chat and "pudding_set" in choice:
                choice["pudding_routed"] = True
        return b"data: " + json.dumps(data).encode()


async def _as_stream(merged: dict):
    """A merged multi-prompt completion as one SSE event (each choice complete)."""
    yield f"data: {json.dumps(merged)}\n\ndata: [DONE]\n\n".encode()


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, replicas: list, router, model: str, options: dict):
        from vllm_pudding.artifact import load_pudding_dir
        from vllm_pudding.dispatch.policy import DispatchOptions, SetAffineDispatcher

        self.replicas, self.router, self.model = replicas, router, model
        self.options = options
        self.pool = load_pudding_dir(Path(model))
        config = json.loads((Path(model) / "config.json").read_text())
        layers = config["num_hidden_layers"]
        self._hf = types.SimpleNamespace(pudding=config["pudding"], num_hidden_layers=layers)
        kept = [frozenset(range(layers)) - set(s) for s in self.pool.omission_sets]
        self.dispatcher = None  # routing "serve": Serve's router picks behind one handle
        if options.get("routing", "affine") == "affine":
            self.dispatcher = SetAffineDispatcher(
                kept, len(replicas), DispatchOptions(**options.get("dispatch", {})))
        self.loads = [0] * len(replicas)
        self.down: set[int] = set()
        self.counters: Counter[str] = Counter()
        self.served_by: Counter[tuple[int, str]] = Counter()  # (replica, set) -> requests
        self.route_seconds: list[float] = []
        self._failures = _replica_failures()
        self._local_router = None
        self._local_router_lock = asyncio.Lock()  # loaded once, not by every waiting prompt
        self._tokenizer = None

    # ------------------------------------------------------------ endpoints

    @app.post("/v1/completions")
    async def completions(self, request: Request):
        return await self._generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        return await self._generate(request, chat=True)

    @app.get("/health")
    async def health(self):
        """200 when every replica answers (so a client waiting on it finds engines up)."""
        up = 0
        for i, handle in enumerate(self.replicas):
            if i not in self.down:
                try:
                    await asyncio.wait_for(handle.stats.remote(), 2.0)
                    up += 1
                except (asyncio.TimeoutError, *self._failures):
                    pass
        return JSONResponse({"replicas_up": up, "replicas": len(self.replicas)},
                            status_code=200 if up == len(self.replicas) else 503)

    @app.get("/pudding/loads")
    async def loads_now(self):
        """Requests in flight per replica and which are down; asks no replica (cheap)."""
        return {"in_flight": self.loads, "down": sorted(self.down),
                "counters": dict(self.counters)}

    @app.get("/pudding/replicas")
    async def replica_stats(self):
        """Per replica: its group, what the dispatcher sent, and the replica's own counts."""
        if self.dispatcher is None:
            return await self._serve_routed_stats()
        out = []
        for i, handle in enumerate(self.replicas):
            row = {"replica": i, "sets": sorted(self.dispatcher.replica_sets[i]),
                   "dispatched": {str(k): v for k, v in sorted(self.dispatcher.served[i].items())},
                   "spills": self.dispatcher.spills[i], "in_flight": self.loads[i],
                   "down": i in self.down}
            if i not in self.down:
                try:
                    row["engine"] = await asyncio.wait_for(handle.stats.remote(), 5)
                except (asyncio.TimeoutError, *self._failures):
                    row["engine"] = None
            out.append(row)
        router = None
        if self.router is not None:
            try:
                router = await asyncio.wait_for(self.router.stats.remote(), 5)
            except (asyncio.TimeoutError, *self._failures):
                pass
        return {"replicas": out, "router": router, "counters": dict(self.counters),
                "route_seconds": self.route_seconds[-1000:]}

    async def _serve_routed_stats(self, calls_per_replica: int = 4):
        """Routing "serve": the engine counts of the replicas that one round of stats calls
        through Serve's router reached (each replica likely, not surely)."""
        (handle,) = self.replicas
        calls = [asyncio.wait_for(handle.stats.remote(), 5)
                 for _ in range(calls_per_replica * self.options.get("replicas", 1))]
        seen = {}
        for stats in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(stats, dict):
                seen[stats["index"]] = stats
        answered: dict[int, dict] = {}
        for (replica, set_id), n in sorted(self.served_by.items()):
            answered.setdefault(replica, {})[set_id] = n
        return {"routing": "serve", "counters": dict(self.counters),
                "answered": {str(r): sets for r, sets in answered.items()},
                "replicas": [{"replica": i, "engine": seen[i]} for i in sorted(seen)],
                "route_seconds": self.route_seconds[-1000:]}

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def passthrough(self, request: Request, path: str):
        """Every other route (models, tokenize, metrics of one replica, ...): any replica."""
        status, headers, body = await self._buffered(await request.body(), request, None)
        return Response(body, status_code=status, headers=headers)

    # ------------------------------------------------------------ deciding the set

    async def _generate(self, request: Request, chat: bool):
        raw = await request.body()
        try:
            plan = await self._plan(raw, chat, request)
        except ReplicaUnavailable:
            return self._unavailable()
        if plan is None:  # vLLM's app answers it as `vllm serve` would (4xx)
            plan = [(raw, None, False)]
        stream = _wants_stream(raw)
        if len(plan) == 1:
            body, set_id, routed = plan[0]
            if stream:
                return await self._streaming(body, request, set_id, routed, chat)
            try:
                status, headers, out = await self._buffered(body, request, set_id)
            except ReplicaUnavailable:
                return self._unavailable()
            return Response(_mark_routed(out, chat) if routed and status == 200 else out,
                            status_code=status, headers=headers)
        return await self._split(plan, request, stream)

    async def _plan(self, raw: bytes, chat: bool, request: Request):
        """[(body, set id, routed)] per replica request; None: forward unchanged."""
        from vllm_pudding.requests import PuddingRequestError, check_client_args

        try:
            data = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        xargs = data.get("vllm_xargs")
        if xargs is not None and not isinstance(xargs, dict):
            return None
        try:
            pinned = check_client_args(self._hf, xargs, "request")
        except PuddingRequestError:
            return None
        if pinned is not None or self.router is None:
            set_id = self.pool.default_set if pinned is None else pinned
            return [(raw, set_id, False)]
        texts = await self._texts(data, chat, request)
        if texts is None:
            return None
        sets = await asyncio.gather(*(self._route(t) for t in texts))
        if len(texts) == 1:
            return [(_pinned_body(data, sets[0]), sets[0], True)]
        return [(_pinned_body({**data, "prompt": p}, s), s, True)
                for p, s in zip(data["prompt"], sets)]

    async def _texts(self, data: dict, chat: bool, request: Request) -> list | None:
        """What the router reads per prompt: the text; token ids (a token-id prompt, or a
        chat as the replicas render it) go to a hidden router as they are, which is what
        the engine's in-engine router reads, and are decoded for a text router."""
        if chat:
            prompts = await self._chat_ids(data, request)
        else:
            prompt = data.get("prompt")
            if isinstance(prompt, str):
                return [prompt]
            if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
                return list(prompt)
            if _is_ids(prompt):
                prompts = [prompt]
            elif isinstance(prompt, list) and prompt and all(_is_ids(p) for p in prompt):
                prompts = list(prompt)
            else:
                return None
        if prompts is None or self.pool.router.kind == "hidden":
            return prompts
        return [self._decode(p) for p in prompts]

    async def _chat_ids(self, data: dict, request: Request) -> list | None:
        """The chat prompt's token ids as the replicas render it (their /tokenize)."""
        keys = ("model", "messages", "add_generation_prompt", "continue_final_message",
                "chat_template", "chat_template_kwargs", "tools")
        body = json.dumps({k: data[k] for k in keys if k in data}).encode()
        status, _, out = await self._buffered(body, request, None, path="/tokenize")
        if status != 200:
            return None  # the chat request itself gets the replica's error
        tokens = json.loads(out)["tokens"]
        return [tokens] if tokens else None

    def _decode(self, ids: list[int]) -> str:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    async def _route(self, prompt: str | list[int]) -> int:
        """The routing workers' set for a prompt; retried, then routed here if they fail."""
        timeout = self.options.get("route_timeout_s", 10.0)
        for _ in range(self.options.get("route_retries", 2)):
            try:
                set_id, seconds = await asyncio.wait_for(self.router.route.remote(prompt),
                                                         timeout)
                self.route_seconds.append(seconds)
                return set_id
            except (asyncio.TimeoutError, *self._failures):
                self.counters["route_retries"] += 1
        self.counters["routed_by_ingress"] += 1
        async with self._local_router_lock:
            if self._local_router is None:
                from vllm_pudding.router.runtime import load_router

                self._local_router = await asyncio.to_thread(load_router, Path(self.model),
                                                             self.pool)
        route = self._local_router.route if isinstance(prompt, str) \
            else self._local_router.route_ids
        return (await asyncio.to_thread(route, [prompt]))[0]

    # ------------------------------------------------------------ choosing the replica

    async def _pick(self, set_id: int | None, resend: bool = False) -> int:
        deadline = time.monotonic() + self.options.get("unavailable_wait_s", 20.0)
        while len(self.down) == len(self.replicas):
            if time.monotonic() > deadline:
                raise ReplicaUnavailable()
            await asyncio.sleep(0.2)
        loads = [10 ** 9 if i in self.down else n for i, n in enumerate(self.loads)]
        if self.dispatcher is None:  # one handle: Serve's router picks the replica
            return 0
        if set_id is None:
            return min(range(len(loads)), key=loads.__getitem__)
        if not resend:  # the set's traffic counts once per request
            self.dispatcher.observe(set_id)
        pick = self.dispatcher.choose(set_id, loads)
        if pick in self.down:  # its whole group is down: any replica serves every set
            self.counters["failover"] += 1
            pick = min(range(len(loads)), key=loads.__getitem__)
        return pick

    def _mark_down(self, replica: int) -> None:
        if replica not in self.down:
            self.down.add(replica)
            self.counters["replica_failures"] += 1
            asyncio.get_running_loop().create_task(self._probe(replica))

    async def _probe(self, replica: int) -> None:
        """Back in rotation once the replica (restarted by Serve) answers again."""
        while True:
            await asyncio.sleep(0.5)
            try:
                await asyncio.wait_for(self.replicas[replica].stats.remote(), 2.0)
            except (asyncio.TimeoutError, *self._failures):
                continue
            self.down.discard(replica)
            self.counters["replica_restarts_seen"] += 1
            return

    # ------------------------------------------------------------ calling it

    def _tally(self, replica: int, set_id: int | None, status: int) -> None:
        """Accepted generation requests (those with a set) per (replica that answered, set):
        under routing "serve" only the answer says where Serve's router sent each."""
        if set_id is not None and status == 200:
            self.served_by[replica, str(set_id)] += 1

    def _call(self, replica: int, body: bytes, request: Request, path: str | None):
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS]
        headers.append(("content-length", str(len(body))))
        return self.replicas[replica].options(stream=True).handle.remote(
            request.method if path is None else "POST", path or _path(request), headers, body)

    async def _buffered(self, body: bytes, request: Request, set_id: int | None,
                        path: str | None = None) -> tuple[int, dict, bytes]:
        """A whole response; resent to another replica when the first one fails."""
        for attempt in range(self.options.get("max_resends", 3) + 1):
            replica = await self._pick(set_id, resend=attempt > 0)
            self.loads[replica] += 1
            try:
                head, chunks = None, []
                async for item in self._call(replica, body, request, path):
                    if head is None:
                        head = item
                    else:
                        chunks.append(item)
                status, headers, served_by = head
                self._tally(served_by, None if path else set_id, status)
                return status, _response_headers(headers), b"".join(chunks)
            except self._failures:
                self._mark_down(replica)
                self.counters["resent"] += 1
            finally:
                self.loads[replica] -= 1
        raise ReplicaUnavailable()

    async def _streaming(self, body: bytes, request: Request, set_id: int, routed: bool,
                         chat: bool):
        """Resends until the replica's response head arrives, then streams it through."""
        for attempt in range(self.options.get("max_resends", 3) + 1):
            try:
                replica = await self._pick(set_id, resend=attempt > 0)
            except ReplicaUnavailable:
                return self._unavailable()
            self.loads[replica] += 1
            gen = self._call(replica, body, request, None)
            try:
                status, headers, served_by = await gen.__anext__()
                self._tally(served_by, set_id, status)
                first = await gen.__anext__() if status == 200 else None
            except StopAsyncIteration:
                first = None
            except self._failures:
                self.loads[replica] -= 1
                self._mark_down(replica)
                self.counters["resent"] += 1
                continue
            if status != 200:
                rest = [first] if first else []
                async for chunk in gen:
                    rest.append(chunk)
                self.loads[replica] -= 1
                return Response(b"".join(rest), status_code=status,
                                headers=_response_headers(headers))
            return StreamingResponse(self._relay(replica, gen, first, routed, chat),
                                     status_code=status, headers=_response_headers(headers))
        return self._unavailable()

    async def _relay(self, replica, gen, first, routed: bool, chat: bool):
        events = _SseRewriter(chat) if routed else None
        try:
            for chunk in ([first] if first else []):
                yield events.feed(chunk) if events else chunk
            async for chunk in gen:
                yield events.feed(chunk) if events else chunk
        except self._failures:
            self._mark_down(replica)
            self.counters["streams_cut"] += 1
            error = {"error": {"message": "the replica serving this stream failed; retry the "
                               "request", "type": "ServiceUnavailable", "code": 503}}
            yield f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode()
        finally:
            self.loads[replica] -= 1

    async def _split(self, plan, request: Request, stream: bool):
        """Several routed prompts: one request each, merged in prompt order."""
        try:
            results = await asyncio.gather(*(self._buffered(b, request, s) for b, s, _ in plan))
        except ReplicaUnavailable:
            return self._unavailable()
        for status, headers, out in results:
            if status != 200:
                return Response(out, status_code=status, headers=headers)
        datas = [json.loads(out) for _, _, out in results]
        n = json.loads(plan[0][0]).get("n") or 1
        merged = dict(datas[0])
        merged["choices"] = [{**c, "index": i * n + c["index"]}
                             for i, d in enumerate(datas) for c in d["choices"]]
        if all(d.get("usage") for d in datas):
            merged["usage"] = {k: sum(d["usage"].get(k) or 0 for d in datas)
                               for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        merged["pudding_sets"] = [s for _, s, _ in plan]
        merged["pudding_routed"] = [True] * len(plan)
        if not stream:
            return JSONResponse(merged)
        self.counters["split_streams_buffered"] += 1
        return StreamingResponse(_as_stream(merged), media_type="text/event-stream")

    def _unavailable(self):
        self.counters["unavailable_503"] += 1
        wait = self.options.get("retry_after_s", 5)
        return JSONResponse({"error": {"message": "no engine replica is up; retry later",
                                       "type": "ServiceUnavailable", "code": 503}},
                            status_code=503, headers={"Retry-After": str(wait)})
