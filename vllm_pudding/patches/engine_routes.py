"""Patch: sets decided by the in-engine (hidden) router reach the caller.

What: wraps `GPUModelRunner.execute_model` / `sample_tokens` (worker),
`Scheduler.update_from_output` (engine core) and `RequestState.make_request_output`
(front end).
Why: the hidden router decides inside the model's forward (`vllm_pudding.depth`,
right after the last layer every set keeps), so only the worker knows the set.
The caller must see it without reading logs, and the engine core must keep it
should the request be preempted and recomputed. The worker attaches the step's
decisions to its `ModelRunnerOutput` (`pudding_routes`, an attribute: it rides
along in-process and through pickling); the scheduler writes each decision into
the request's sampling params (a recompute then runs the same set) and puts it on
the request's next `EngineCoreOutput` under a private `kv_transfer_params` key;
the front end pops that key before vLLM builds the `RequestOutput`, so
`kv_transfer_params` stays as vLLM would have it, and sets `pudding_set`. The
worker's routing-step duration travels the same way (`_pudding_route_seconds`)
for the routing-time metric (`vllm_pudding.metrics`).
Removable when: vLLM has per-request model outputs a plugin can fill.
"""

from __future__ import annotations

import copy
import inspect

from vllm_pudding import depth
from vllm_pudding.config import SET_ARG
from vllm_pudding.patches import wrap

ROUTES_ATTR = "pudding_routes"
OUTPUT_KEY = "_pudding_set"
"""Private key of EngineCoreOutput.kv_transfer_params that carries a decided set."""
SECONDS_KEY = "_pudding_route_seconds"
"""... and the duration of the worker's routing step that decided it."""


def apply() -> None:
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.engine.output_processor import RequestState
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    wrap(GPUModelRunner, "execute_model", _wrap_runner)
    wrap(GPUModelRunner, "sample_tokens", _wrap_runner)
    wrap(Scheduler, "update_from_output", _wrap_scheduler)
    wrap(RequestState, "make_request_output", _wrap_request_output)


# ---------------------------------------------------------------- worker

def _wrap_runner(original):
    def method(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if out is None or not depth.is_active():
            return out
        routes = depth.take_routes()
        return _attach(out, routes) if routes else out

    return method


def _attach(out, routes: dict[str, tuple[int, float]]):
    from vllm.v1.outputs import EMPTY_MODEL_RUNNER_OUTPUT, ModelRunnerOutput

    if isinstance(out, ModelRunnerOutput):
        if out is EMPTY_MODEL_RUNNER_OUTPUT:
            out = copy.copy(out)  # never mark the shared empty output
        setattr(out, ROUTES_ATTR, {**getattr(out, ROUTES_ATTR, {}), **routes})
        return out
    if hasattr(out, "get_output"):  # async scheduling: the output is resolved later
        inner = out.get_output
        out.get_output = lambda: _attach(inner(), routes)
        return out
    depth.restore_routes(routes)  # intermediate tensors: report with the next output
    return out


# ---------------------------------------------------------------- engine core

def _wrap_scheduler(original):
    def update_from_output(self, scheduler_output, model_runner_output):
        routes = getattr(model_runner_output, ROUTES_ATTR, None)
        unreported = self.__dict__.setdefault("_pudding_unreported", {})
        for req_id, (set_id, seconds) in (routes or {}).items():
            request = self.requests.get(req_id)
            if request is not None:
                params = request.sampling_params
                params.extra_args = {**(params.extra_args or {}), SET_ARG: set_id}
                unreported[req_id] = (set_id, seconds)
        outputs = original(self, scheduler_output, model_runner_output)
        if unreported:
            _report(unreported, outputs)
            for req_id in [r for r in unreported if r not in self.requests]:
                del unreported[req_id]  # finished or aborted without another output
        return outputs

    return update_from_output


def _report(unreported: dict[str, tuple[int, float]], outputs: dict) -> None:
    for batch in outputs.values():
        for out in batch.outputs:
            decided = unreported.pop(out.request_id, None)
            if decided is not None:
                out.kv_transfer_params = {**(out.kv_transfer_params or {}),
                                          OUTPUT_KEY: decided[0], SECONDS_KEY: decided[1]}


# ---------------------------------------------------------------- front end

def _wrap_request_output(original):
    signature = inspect.signature(original)
    if "kv_transfer_params" not in signature.parameters:
        raise RuntimeError("vllm-pudding: make_request_output has no kv_transfer_params")

    def make_request_output(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        params = bound.arguments.get("kv_transfer_params")
        if params and OUTPUT_KEY in params:
            params = dict(params)
            self.pudding_set = params.pop(OUTPUT_KEY)
            self.pudding_route_seconds = params.pop(SECONDS_KEY, None)
            bound.arguments["kv_transfer_params"] = params or None
        return original(*bound.args, **bound.kwargs)

    return make_request_output
