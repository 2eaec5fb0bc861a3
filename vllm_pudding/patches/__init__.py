"""Every change vLLM-pudding makes to vLLM internals, applied once per process.

Each module holds one patch and documents what it changes, why, and when it can
go; `patches/README.md` at the repo root lists them all. Patches check the
feature they wrap (attribute present, signature) instead of vLLM's version
string, and raise a clear error when the vLLM build does not offer it.
"""

from __future__ import annotations

import importlib

PATCHES = (
    "runner_step",  # depth plan per step (V1 runner)
    "request_admission",  # validate/resolve set ids, per-set prefix-cache salt
    "offline_validation",  # LLM.generate names the bad request before running any
    "v1_runner",  # PuDDing models run on the V1 model runner
    "kv_slots",  # KV storage only for each request's kept layers
    "auto_routing",  # the router picks a set for requests that name none; outputs say which
    "openai_xargs",  # the OpenAI server checks pudding_* keys as sent (before JSON coercion)
    "engine_routes",  # sets the in-engine (hidden) router decides reach the caller
    "omission_admission",  # opt-in: admit waiting requests that share the batch's omitted layers
    "compile_warmup",  # compiled layers compile at engine start (CPU)
    "attention_backend",  # only backends the sub-batch metadata is correct for
    "request_metrics",  # finished requests' stats carry their set (per-set Prometheus series)
    "model_names",  # `pudding/<name>` resolves wherever vLLM takes a model
    "dp_dispatch",  # data-parallel `vllm serve`: each request to a replica of its set's group
)

_applied = False


def apply_all() -> None:
    """Idempotent: plugins load in every vLLM process, sometimes more than once."""
    global _applied
    if _applied:
        return
    for name in PATCHES:
        importlib.import_module(f"{__name__}.{name}").apply()
    _applied = True


def on_cpu() -> bool:
    """Whether this process runs vLLM's CPU platform.

    CPU-only vLLM modules are imported only then: `vllm.v1.worker.cpu_worker` imports
    `v1/worker/cpu/shm.py`, which replaces `torch.cuda.Event`, streams, memory queries
    and `Tensor.pin_memory` at import time, on any platform.
    """
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def wrap(owner, attr: str, make_wrapper) -> None:
    """Replaces owner.attr (a class or module) by make_wrapper(original) once.

    Checks the feature exists instead of comparing vLLM's version string.
    """
    original = getattr(owner, attr, None)
    if original is None:
        raise RuntimeError(
            f"vllm-pudding: {getattr(owner, '__qualname__', owner.__name__)}.{attr} is missing; "
            "this vLLM build is not the one vllm-pudding supports (0.32.0)"
        )
    if getattr(original, "__pudding_wrapped__", False):
        return
    wrapper = make_wrapper(original)
    # A classmethod wrapper is marked on its function, which the bound method exposes.
    marked = wrapper.__func__ if isinstance(wrapper, classmethod) else wrapper
    marked.__pudding_wrapped__ = True
    marked.__wrapped__ = original
    setattr(owner, attr, wrapper)
