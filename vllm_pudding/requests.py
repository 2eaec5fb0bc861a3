"""Resolving a request's omission set from its sampling params (front end only).

Two checks, at two moments: `check_client_args` reads the `pudding_*` keys exactly as the
caller sent them (before routing adds the plugin's own keys), `resolve_request` reads the
request as it enters the engine (after routing).
"""

from __future__ import annotations

from typing import Any

from vllm.exceptions import VLLMValidationError

from vllm_pudding.config import (CLIENT_ARGS, INTERNAL_ARGS, ROUTE_ARG, SET_ARG,
                                 from_hf_config)

PREFIX = "pudding"
"""Keys starting with this (any case) are vllm-pudding's: unknown ones are refused, not
ignored, so a mistyped `pudding_sett` cannot silently run the default set."""

ROUTE = "route"
"""resolve_request's answer for a request the in-engine router will decide."""


class PuddingRequestError(VLLMValidationError, ValueError):
    """A request's `pudding_*` fields are invalid: an unknown or internal key, or a set id
    the model's pool does not have.

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


def check_client_args(hf_config: Any, extra: Any, who: str) -> int | None:
    """Validates the `pudding_*` keys a caller sent (`extra_args` / `vllm_xargs`, before
    coercion) and returns the pinned set id, None when unpinned or not a pudding model.

    Raises PuddingRequestError naming `who`, the key and the keys a caller may send.
    """
    pool = from_hf_config(hf_config)
    if pool is None or not extra:
        return None
    known = ", ".join(CLIENT_ARGS)
    for key in extra:
        if not str(key).lower().startswith(PREFIX) or key in CLIENT_ARGS:
            continue
        why = (f"{key} is set by vllm-pudding itself, not by requests" if key in INTERNAL_ARGS
               else f"unknown key {key!r}")
        raise PuddingRequestError(f"{who}: {why}; known pudding keys: {known}", parameter=key)
    if extra.get(SET_ARG) is None:
        return None
    try:
        return pool.resolve_set_id(extra[SET_ARG])
    except ValueError as e:
        raise PuddingRequestError(f"{who}: {e}", parameter=SET_ARG) from None
