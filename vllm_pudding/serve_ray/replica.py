"""One engine replica: `vllm serve`'s own OpenAI app over an in-process AsyncLLM.

The replica parses the same flags as `vllm serve` (so a Ray deployment and a plain server
of the same pudding dir behave alike, bad input included: vLLM's request models and error
handlers answer it) and serves no socket: `handle` runs one HTTP request through the app
(`asgi.call`) and streams the response back to the ingress over Ray. The plugin's patches
apply in this process as in `vllm serve` (vLLM loads general plugins on engine start).

On CPU each replica is pinned to its own cores (process affinity and
`VLLM_CPU_OMP_THREADS_BIND`, set by the app builder per deployment): vLLM's automatic
binding would put every replica on core 0. Replicas of one deployment (the app's
`routing="serve"` baseline) share one runtime_env, so each takes its cores from its Serve
rank instead.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import AsyncIterator

from vllm_pudding.serve_ray.asgi import call


def serve_args(model: str, vllm_args: list[str]):
    """`vllm serve MODEL *vllm_args` parsed and validated as the CLI does."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser(prog="vllm serve")).parse_args(
        [model, *vllm_args])
    args.model = args.model_tag
    validate_parsed_serve_args(args)
    return args


def _rank_and_cores(cores_per_rank: int) -> tuple[int, list[int] | None]:
    """This replica's Serve rank and, with `cores_per_rank`, its block of cores (the engine
    process started next inherits VLLM_CPU_OMP_THREADS_BIND)."""
    from ray import serve

    from vllm_pudding.serve_ray.app import replica_cores

    rank = serve.get_replica_context().rank
    rank = int(getattr(rank, "rank", rank))  # a ReplicaRank model in Ray 2.60
    if not cores_per_rank:
        return rank, None
    cores = replica_cores(rank, cores_per_rank)
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(map(str, cores))
    return rank, cores


class EngineReplica:
    """A Serve deployment class (the app builder wraps it with `serve.deployment`)."""

    async def __init__(self, model: str, vllm_args: list[str], index: int | None,
                       cores: list[int] | None = None, cores_per_rank: int = 0):
        if index is None:  # one of a deployment's N replicas: its Serve rank says which
            index, cores = _rank_and_cores(cores_per_rank)
        if cores:
            os.sched_setaffinity(0, cores)
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
        from vllm.entrypoints.launchers.app import build_app

        self.index, self.cores = index, cores
        self.args = serve_args(model, vllm_args)
        self._engine_ctx = build_async_engine_client(self.args)
        engine = await self._engine_ctx.__aenter__()
        tasks = await engine.get_supported_tasks()
        self.app = build_app(self.args, tasks, engine.model_config)
        await init_app_state(engine, self.app.state, self.args, tasks)
        self.sets_served: Counter[str] = Counter()  # set id (or "none") -> accepted requests
        self.in_flight = 0

    async def handle(self, method: str, path: str, headers: list[tuple[str, str]],
                     body: bytes) -> AsyncIterator:
        """Streams (status, headers, this replica's index), then the body chunks, of one
        request to the app (the index tells an ingress behind Serve's router who served)."""
        self.in_flight += 1
        try:
            async for item in call(self.app, method, path, headers, body):
                if isinstance(item, tuple):
                    if item[0] == 200:
                        self._count(path, body)  # requests the engine accepted
                    item = (*item, self.index)
                yield item
        finally:
            self.in_flight -= 1

    def _count(self, path: str, body: bytes) -> None:
        if not path.startswith(("/v1/completions", "/v1/chat/completions")):
            return
        try:
            xargs = json.loads(body).get("vllm_xargs") or {}
            self.sets_served[str(xargs.get("pudding_set", "none"))] += 1
        except (ValueError, AttributeError):
            self.sets_served["unparsed"] += 1

    def stats(self) -> dict:
        """What the ingress shows on /pudding/replicas (pid: the fault tests kill it)."""
        return {"index": self.index, "pid": os.getpid(), "cores": self.cores,
                "in_flight": self.in_flight, "sets_served": dict(self.sets_served)}

    def check_health(self) -> None:
        """Serve's health check: the engine must still be running."""
        engine = self.app.state.engine_client
        if getattr(engine, "errored", False):
            raise RuntimeError(f"replica {self.index}: engine errored")
