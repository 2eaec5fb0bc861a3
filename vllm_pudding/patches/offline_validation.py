"""Patch: `LLM.generate` / `LLM.chat` validate every request's set id before adding any.

What: wraps `OfflineInferenceMixin._params_to_seq`, the step where vLLM pairs
each prompt with its sampling params, before rendering or adding requests.
Why: the error should name the prompt's index in the caller's list (engine
request ids are a process-wide counter) and nothing should run or be queued.
(The admission patch would also catch it, after earlier prompts were added and
then aborted.) Removable when: vLLM validates extra_args through a model hook.
"""

from __future__ import annotations

from vllm_pudding.patches import wrap
from vllm_pudding.requests import resolve_request


def apply() -> None:
    from vllm.entrypoints.common.offline import OfflineInferenceMixin

    wrap(OfflineInferenceMixin, "_params_to_seq", _wrap)


def _wrap(original):
    def _params_to_seq(self, params, num_requests):
        seq = original(self, params, num_requests)
        hf_config = self.model_config.hf_config
        for index, item in enumerate(seq):
            resolve_request(hf_config, item, f"prompt {index}")
        return seq

    return _params_to_seq
