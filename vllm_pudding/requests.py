"""Resolving a request's omission set from its sampling params (front end only)."""

from __future__ import annotations

from typing import Any

from vllm.exceptions import VLLMValidationError

from vllm_pudding.config import ROUTE_ARG, SET_ARG, from_hf_config

ROUTE = "route"
"""resolve_request's answer for a request the in-engine router will decide."""


class PuddingRequestError(VLLMValidationError, ValueError):
    """A request names an omission set the model's pool does not have.

    A ValueError for offline callers; a VLLMValidationError because vLLM's async
    front end passes only client errors through as HTTP 400 (anything else
    becomes an empty HTTP 500).
    """


def resolve_request(hf_config: Any, params: Any, who: str) -> int | str | None:
    """The request's set id (default when unset), ROUTE when the in-engine router decides
    it, None for non-pudding models or pooling.

    Raises PuddingRequestError naming `who` (e.g. "prompt 3") for a bad value.
    """
    from vllm.sampling_params import SamplingParams

    pool = from_hf_config(hf_config)
    if pool is None or not isinstance(params, SamplingParams):
        return None
    extra = params.extra_args or {}
    if extra.get(ROUTE_ARG) and extra.get(SET_ARG) is None:
        if pool.router is None or pool.router.kind != "hidden":
            raise PuddingRequestError(f"{who}: {ROUTE_ARG} needs a pudding dir with a hidden "
                                      "(in-engine) router", parameter=ROUTE_ARG)
        return ROUTE
    try:
        return pool.resolve_set_id(extra.get(SET_ARG))
    except ValueError as e:
        raise PuddingRequestError(f"{who}: {e}", parameter=SET_ARG) from None
