"""Patch: every request's omission set is resolved and validated at admission.

What: wraps `InputProcessor.process_inputs` (front end, before the engine sees
the request). For PuDDing models it validates `extra_args["pudding_set"]`,
writes the resolved set id (default when absent) into the request's private
sampling params, and salts the request's prefix-cache key with the set id.
Why: a bad set id must fail its own request (offline: ValueError; online:
HTTP 400) and never reach the engine core, where an exception would take the
engine down. Prefix caching keyed on tokens alone would serve one set's KV to
another set, whose hidden states differ from the first omitted layer on
(verified: a cross-set hit changes the output); the salt keeps sets apart.
Requests the in-engine router decides (`pudding_route`) get the salt
`pudding-route` and never read the prefix cache: their set, hence their KV slot
layout, is unknown until their first chunk has run, and the router must read the
whole first chunk.
Removable when: vLLM has a model hook for per-request admission and cache keys.
"""

from __future__ import annotations

from vllm_pudding.patches import wrap
from vllm_pudding.requests import ROUTE, resolve_request


def apply() -> None:
    from vllm.v1.engine.input_processor import InputProcessor

    wrap(InputProcessor, "process_inputs", _wrap)


def _wrap(original):
    def process_inputs(self, request_id, prompt, params, *args, **kwargs):
        set_id = resolve_request(self.model_config.hf_config, params, f"request {request_id!r}")
        request = original(self, request_id, prompt, params, *args, **kwargs)
        if set_id == ROUTE:
            request.sampling_params.skip_reading_prefix_cache = True
            _salt(request, "pudding-route", self.cache_config.enable_prefix_caching)
        elif set_id is not None:
            _pin(request, set_id, self.cache_config.enable_prefix_caching)
        return request

    return process_inputs


def _pin(request, set_id: int, prefix_caching: bool) -> None:
    from vllm_pudding.config import SET_ARG

    params = request.sampling_params  # the request's private copy
    params.extra_args = {**(params.extra_args or {}), SET_ARG: set_id}
    _salt(request, f"pudding-set-{set_id}", prefix_caching)


def _salt(request, salt: str, prefix_caching: bool) -> None:
    if prefix_caching:
        request.cache_salt = salt if not request.cache_salt else f"{request.cache_salt}|{salt}"
