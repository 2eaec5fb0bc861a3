"""Patch (part of auto_routing): OpenAI responses say which set each prompt ran with.

What: `/v1/completions` responses gain `pudding_sets` (one set id per prompt, in prompt
order) and `pudding_routed` (whether the router chose each); `/v1/chat/completions`
responses gain `pudding_set` and `pudding_routed`. vLLM's OpenAI models allow extra
fields, so clients that do not know them ignore them. Streamed responses: every
completion chunk's choices carry `pudding_set` / `pudding_routed` (choices of several
prompts interleave in one stream), every chat chunk carries them at the top level.
Why: a caller must see the routing decision without reading server logs.
Removable when: vLLM has a way to return per-request model metadata.
"""

from __future__ import annotations

import inspect
import json

from vllm_pudding.patches import wrap


def apply() -> None:
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion

    wrap(OpenAIServingCompletion, "request_output_to_completion_response", _wrap_completion)
    wrap(OpenAIServingChat, "chat_completion_full_generator", _wrap_chat)
    wrap(OpenAIServingCompletion, "completion_stream_generator", _wrap_stream(per_choice=True))
    wrap(OpenAIServingChat, "chat_completion_stream_generator", _wrap_stream(per_choice=False))


def _wrap_completion(original):
    def request_output_to_completion_response(self, final_res_batch, *args, **kwargs):
        response = original(self, final_res_batch, *args, **kwargs)
        sets = [getattr(r, "pudding_set", None) for r in final_res_batch]
        if any(s is not None for s in sets):
            response.pudding_sets = sets
            response.pudding_routed = [bool(getattr(r, "pudding_routed", False))
                                       for r in final_res_batch]
        return response

    return request_output_to_completion_response


def _wrap_chat(original):
    async def chat_completion_full_generator(self, request, result_generator, *args, **kwargs):
        seen = {}

        async def recording():
            async for out in result_generator:
                if getattr(out, "pudding_set", None) is not None:
                    seen["set"], seen["routed"] = out.pudding_set, out.pudding_routed
                yield out

        response = await original(self, request, recording(), *args, **kwargs)
        if seen and hasattr(response, "choices"):
            response.pudding_set, response.pudding_routed = seen["set"], seen["routed"]
        return response

    return chat_completion_full_generator


def _wrap_stream(per_choice: bool):
    """Streams whose chunks carry the set of the prompt they belong to."""

    def make(original):
        signature = inspect.signature(original)

        async def stream(self, *args, **kwargs):
            bound = signature.bind(self, *args, **kwargs)
            known: dict[int, tuple[int, bool]] = {}
            bound.arguments["result_generator"] = _recording(
                bound.arguments["result_generator"], known)
            n = getattr(bound.arguments["request"], "n", None) or 1
            async for chunk in original(*bound.args, **bound.kwargs):
                yield _annotated(chunk, known, n, per_choice) if known else chunk

        return stream

    return make


async def _recording(results, known: dict):
    """Passes results through, noting each prompt's (set, routed) as soon as it is known."""
    async for item in results:
        index, out = item if isinstance(item, tuple) else (0, item)
        if getattr(out, "pudding_set", None) is not None:
            known[index] = (out.pudding_set, bool(getattr(out, "pudding_routed", False)))
        yield item


def _annotated(chunk: str, known: dict, n: int, per_choice: bool) -> str:
    if not chunk.startswith("data: {"):
        return chunk  # "[DONE]"
    data = json.loads(chunk[len("data: "):])
    choices = data.get("choices") or []
    if per_choice:
        for choice in choices:
            found = known.get(choice.get("index", 0) // n)
            if found:
                choice["pudding_set"], choice["pudding_routed"] = found
    elif choices and 0 in known:
        data["pudding_set"], data["pudding_routed"] = known[0]
    else:
        return chunk
    return f"data: {json.dumps(data)}\n\n"
