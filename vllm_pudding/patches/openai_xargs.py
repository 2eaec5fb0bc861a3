"""Patch: the OpenAI server checks a request's `pudding_*` keys as the client sent them.

What: wraps `OpenAIServingCompletion.create_completion` and
`OpenAIServingChat.create_chat_completion`. For PuDDing models it reads `vllm_xargs`
from the request's own JSON body (`raw_request.json()`: Starlette keeps the body FastAPI
read) and runs `requests.check_client_args` on it: an unknown or internal `pudding_*`
key, or a `pudding_set` that is not a set id of the pool, raises `PuddingRequestError`
(a `VLLMValidationError`: HTTP 400 naming the key and the known keys). Without a raw
request (`vllm run-batch`) it checks the parsed `request.vllm_xargs`.
Why: vLLM types `vllm_xargs` as `dict[str, str | int | float | list[...]]`
(`openai/completion/protocol.py`, `chat_completion/protocol.py`), and pydantic's lax
mode turns JSON `true` into `1` while parsing the request, so `{"pudding_set": true}`
reached the plugin as set 1, while `LLM.generate` refuses `True`. Reading the body
sees the value before that coercion, with the model's pool at hand; rewriting vLLM's
request schema instead would change `vllm_xargs` for every model and extension. The
check runs before vLLM commits a streaming response, so a streamed request with a bad
key or set gets HTTP 400 too (instead of HTTP 200 with an error event and a
traceback in the server log).
Removable when: vLLM keeps `vllm_xargs` values as sent (or lets a model validate them).
"""

from __future__ import annotations

import json

from vllm_pudding.config import from_hf_config
from vllm_pudding.patches import wrap
from vllm_pudding.requests import check_client_args

XARGS = "vllm_xargs"


def apply() -> None:
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion

    wrap(OpenAIServingCompletion, "create_completion", _wrap)
    wrap(OpenAIServingChat, "create_chat_completion", _wrap)


def _wrap(original):
    async def create(self, request, raw_request=None, *args, **kwargs):
        hf_config = self.model_config.hf_config
        if from_hf_config(hf_config) is not None:
            xargs = await _sent_xargs(request, raw_request)
            if xargs:
                check_client_args(hf_config, xargs, XARGS)
        return await original(self, request, raw_request, *args, **kwargs)

    return create


async def _sent_xargs(request, raw_request):
    """`vllm_xargs` as the client wrote it; the parsed field when there is no body."""
    parsed = getattr(request, XARGS, None)
    if raw_request is None or not parsed:  # nothing sent, or no HTTP request to read
        return parsed
    try:
        body = await raw_request.json()
    except (json.JSONDecodeError, UnicodeDecodeError, RuntimeError):
        return parsed
    sent = body.get(XARGS) if isinstance(body, dict) else None
    return sent if isinstance(sent, dict) else parsed
