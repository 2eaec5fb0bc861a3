"""Patch (part of auto_routing): OpenAI responses say which set each prompt ran with.

What: `/v1/completions` responses gain `pudding_sets` (one set id per prompt, in prompt
order) and `pudding_routed` (whether the router chose each); `/v1/chat/completions`
responses gain `pudding_set` and `pudding_routed`. vLLM's OpenAI models allow extra
fields, so clients that do not know them ignore them.
Why: a caller must see the routing decision without reading server logs.
Limits: streamed responses do not carry the fields yet.
Removable when: vLLM has a way to return per-request model metadata.
"""

from __future__ import annotations

from vllm_pudding.patches import wrap


def apply() -> None:
    from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat
    from vllm.entrypoints.openai.completion.serving import OpenAIServingCompletion

    wrap(OpenAIServingCompletion, "request_output_to_completion_response", _wrap_completion)
    wrap(OpenAIServingChat, "chat_completion_full_generator", _wrap_chat)


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
