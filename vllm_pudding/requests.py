"""Resolving a request's omission set from its sampling params (front end only)."""

from __future__ import annotations

from typing import Any

from vllm.exceptions import VLLMValidationError

from vllm_pudding.config import SET_ARG, from_hf_config


class PuddingRequestError(VLLMValidationError, ValueError):
    """A request names an omission set the model's pool does not have.

    A ValueError for offline callers; a VLLMValidationError because vLLM's async
    front end passes only client errors through as HTTP 400 (anything else
    becomes an empty HTTP 500).
    """


def resolve_request(hf_config: Any, params: Any, who: str) -> int | None:
    """The request's set id (default when unset); None for non-pudding models or pooling.

    Raises PuddingRequestError naming `who` (e.g. "prompt 3") for a bad value.
    """
    from vllm.sampling_params import SamplingParams

    pool = from_hf_config(hf_config)
    if pool is None or not isinstance(params, SamplingParams):
        return None
    try:
        return pool.resolve_set_id((params.extra_args or {}).get(SET_ARG))
    except ValueError as e:
        raise PuddingRequestError(f"{who}: {e}", parameter=SET_ARG) from None
