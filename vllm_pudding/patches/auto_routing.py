"""Patch: requests that name no set are routed by the pudding dir's router, in batches.

What:
- offline (`LLM.generate` / `LLM.chat`): wraps `OfflineInferenceMixin._render_and_add_requests`.
  Before any request is added, every prompt without `pudding_set` is routed in ONE
  router call; each gets a private copy of its sampling params carrying the chosen
  set (and `pudding_routed: True`).
- online (`vllm serve`): wraps `AsyncLLM.add_request`. Requests without a set await a
  micro-batcher that routes all requests arriving within one short window (default
  2 ms, `PUDDING_ROUTER_WINDOW_MS`) in one call, run off the event loop.
- visibility: `RequestState.from_new_request` remembers the request's set, and every
  `RequestOutput` carries `pudding_set` (int) and `pudding_routed` (bool); the OpenAI
  completion and chat responses gain `pudding_sets` (one per prompt) / `pudding_set`.
Hidden routers are not run here: their requests get `pudding_route: True` (and
`pudding_routed`), and the worker decides on the first prefill chunk from the
engine's own states (router/in_engine.py; the set comes back via engine_routes.py).
Why: routing must happen once per prompt, before the request reaches the engine
(the set fixes which layers and KV slots it uses for prefill and decode), with no
user code; an explicit `pudding_set` always wins. The admission patch then
validates the set like any other. A router that fails to load raises ValueError
naming its file on the first request (offline) or fails that request (online, 400).
Removable when: vLLM offers a per-request routing hook in its front end.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator

from vllm_pudding.config import (ROUTE_ARG, ROUTE_SECONDS_ARG, ROUTED_ARG, SET_ARG,
                                 from_hf_config)
from vllm_pudding.patches import wrap
from vllm_pudding.requests import check_client_args


def apply() -> None:
    from vllm.entrypoints.common.offline import OfflineInferenceMixin
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.engine.output_processor import RequestState

    wrap(OfflineInferenceMixin, "_render_and_add_requests", _wrap_offline)
    wrap(AsyncLLM, "add_request", _wrap_async)
    wrap(RequestState, "from_new_request", _wrap_state)
    wrap(RequestState, "_new_request_output", _wrap_output)
    from vllm_pudding.patches import openai_fields

    openai_fields.apply()


# ---------------------------------------------------------------- helpers

IN_ENGINE = "in-engine"
"""_router's answer for a hidden router: the worker decides (router/in_engine.py)."""


def _router(model_config):
    pool = from_hf_config(model_config.hf_config)
    if pool is None or pool.router is None:
        return None
    if pool.router.kind == "hidden":
        return IN_ENGINE
    from vllm_pudding.router.runtime import router_for

    return router_for(model_config.model, pool)


def _needs_route(params) -> bool:
    from vllm.sampling_params import SamplingParams

    return isinstance(params, SamplingParams) and (params.extra_args or {}).get(SET_ARG) is None


def prompt_text(prompt, tokenizer) -> str:
    """The text a router reads: the prompt string, else the decoded prompt token ids."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict):
        if isinstance(prompt.get("prompt"), str):
            return prompt["prompt"]
        ids = prompt.get("prompt_token_ids")
        if ids is not None and tokenizer is not None:
            return tokenizer.decode(list(ids), skip_special_tokens=True)
    raise ValueError("vllm-pudding: the router needs a text or token-id prompt")


def _pinned(params, set_id: int, seconds: float):
    """A private copy of `params` carrying the routed set (shared params stay untouched)
    and how long the router call that chose it took."""
    return _private(params, {SET_ARG: int(set_id), ROUTED_ARG: True, ROUTE_SECONDS_ARG: seconds})


def _to_engine(params):
    """A private copy of `params` that asks the in-engine router for a set."""
    return _private(params, {ROUTE_ARG: True, ROUTED_ARG: True})


def _spread(engine, params):
    """A set from `pudding_spread_sets` (spread.py) for a request that names none."""
    from vllm_pudding import spread

    spreader = spread.for_engine(engine)
    if spreader is None or not _needs_route(params):
        return params
    return _private(params, {SET_ARG: spreader.next()})


def _private(params, extra: dict):
    copy = params.clone()
    copy.extra_args = {**(params.extra_args or {}), **extra}
    return copy


# ---------------------------------------------------------------- offline

def _wrap_offline(original):
    def _render_and_add_requests(self, prompts, params, **kwargs):
        params = [_spread(self, p) for p in params]
        router = _router(self.model_config)
        if router is not None and any(_needs_route(p) for p in params):
            prompts, params = list(prompts), list(params)
            todo = [i for i, p in enumerate(params) if _needs_route(p)]
            if router is IN_ENGINE:
                for i in todo:
                    params[i] = _to_engine(params[i])
            else:
                tok = self.get_tokenizer()
                start = time.perf_counter()
                sets = router.route([prompt_text(prompts[i], tok) for i in todo])
                seconds = time.perf_counter() - start
                for i, s in zip(todo, sets):
                    params[i] = _pinned(params[i], s, seconds)
        return original(self, prompts, params, **kwargs)

    return _render_and_add_requests


# ---------------------------------------------------------------- online

class RouteBatcher:
    """Collects texts for a short window, routes them in one call off the event loop."""

    def __init__(self, router, window_s: float):
        self.router, self.window_s = router, window_s
        self.pending: list[tuple[str, asyncio.Future]] = []
        self.flush_scheduled = False

    async def route(self, text: str) -> tuple[int, float]:
        """The set chosen for `text`, and the seconds its batch's router call took."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.pending.append((text, fut))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            loop.call_later(self.window_s, lambda: asyncio.ensure_future(self._flush()))
        return await fut

    async def _flush(self) -> None:
        batch, self.pending, self.flush_scheduled = self.pending, [], False
        try:
            sets, seconds = await asyncio.to_thread(self._timed_route, [t for t, _ in batch])
        except Exception as e:  # every waiting request fails alike, the server keeps serving
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        for (_, fut), s in zip(batch, sets):
            if not fut.done():
                fut.set_result((s, seconds))

    def _timed_route(self, texts: list[str]) -> tuple[list[int], float]:
        start = time.perf_counter()
        sets = self.router.route(texts)
        return sets, time.perf_counter() - start


def _batcher(engine):
    b = getattr(engine, "_pudding_route_batcher", None)
    if b is None:
        router = _router(engine.model_config)
        if router is None or router is IN_ENGINE:
            return router
        window = float(os.environ.get("PUDDING_ROUTER_WINDOW_MS", "2")) / 1000
        b = RouteBatcher(router, window)
        engine._pudding_route_batcher = b
    return b


def _wrap_async(original):
    async def add_request(self, request_id, prompt, params, *args, **kwargs):
        from vllm.sampling_params import SamplingParams

        if isinstance(params, SamplingParams):  # as the caller sent them: before routing
            check_client_args(self.model_config.hf_config, params.extra_args,
                              f"request {request_id!r}")
        params = _spread(self, params)
        if _needs_route(params) and not isinstance(prompt, AsyncGenerator):
            try:
                batcher = _batcher(self)
            except ValueError as e:
                from vllm_pudding.requests import PuddingRequestError

                raise PuddingRequestError(f"request {request_id!r}: {e}",
                                          parameter=SET_ARG) from None
            if batcher is IN_ENGINE:
                params = _to_engine(params)
            elif batcher is not None:
                text = kwargs.get("prompt_text") or prompt_text(prompt, self.tokenizer)
                params = _pinned(params, *await batcher.route(text))
        return await original(self, request_id, prompt, params, *args, **kwargs)

    return add_request


# ---------------------------------------------------------------- outputs

def _wrap_state(original):
    func = original.__func__  # `original` is the classmethod bound to RequestState

    def from_new_request(cls, tokenizer, request, *args, **kwargs):
        state = func(cls, tokenizer, request, *args, **kwargs)
        extra = getattr(request.sampling_params, "extra_args", None) or {}
        state.pudding_set = extra.get(SET_ARG)
        state.pudding_routed = bool(extra.get(ROUTED_ARG, False))
        state.pudding_route_seconds = extra.get(ROUTE_SECONDS_ARG)  # hidden: engine_routes
        return state

    return classmethod(from_new_request)


def _wrap_output(original):
    def _new_request_output(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if getattr(self, "pudding_set", None) is not None:
            out.pudding_set = self.pudding_set
            out.pudding_routed = self.pudding_routed
        return out

    return _new_request_output
