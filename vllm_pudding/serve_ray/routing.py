"""Routing workers: the pudding dir's router run before dispatch, on batches of prompts.

A Serve deployment (autoscaled; GPUs per worker configurable) that loads the dir's router
with the project's runtime (`router.runtime.load_router`): for a text router its encoder
and head, for a hidden router the base model's embeddings, the prefix layers every set
keeps and the head (`router.hidden.PrefixEncoder`, no KV kept). `@serve.batch` gathers
the prompts of concurrent requests into one router call, as the in-server
`RouteBatcher` does for `vllm serve`. Knowing the set before dispatch is what lets the
ingress send a request to a replica serving that set's group.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from ray import serve


class RoutingWorker:
    """prompt text -> (set id, seconds of the batched router call that chose it)."""

    def __init__(self, model: str, batch_size: int = 32, batch_wait_s: float = 0.002):
        from vllm_pudding.artifact import load_pudding_dir
        from vllm_pudding.router.runtime import load_router

        pool = load_pudding_dir(Path(model))
        self.router = load_router(Path(model), pool)
        if self.router is None:
            raise ValueError(f"{model}: the pudding dir names no router")
        self.route.set_max_batch_size(batch_size)
        self.route.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def route(self, prompts: list[str | list[int]]) -> list[tuple[int, float]]:
        """Called with one prompt per request (a text, or token ids for a hidden router:
        what the engine would read); Serve hands this the batch (size and wait set from the
        config in __init__)."""
        start = time.perf_counter()
        sets = await asyncio.to_thread(self._route, prompts)
        seconds = time.perf_counter() - start
        return [(int(s), seconds) for s in sets]

    def _route(self, prompts: list) -> list[int]:
        texts = [i for i, p in enumerate(prompts) if isinstance(p, str)]
        ids = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        out = [0] * len(prompts)
        for idx, sets in ((texts, self.router.route([prompts[i] for i in texts]) if texts
                           else []),
                          (ids, self.router.route_ids([prompts[i] for i in ids]) if ids
                           else [])):
            for i, s in zip(idx, sets):
                out[i] = s
        return out

    def stats(self) -> dict:
        s = self.router.stats
        return {"pid": os.getpid(), "calls": s.calls, "prompts": s.prompts,
                "seconds": s.seconds, "max_batch": max(s.batch_sizes, default=0)}
