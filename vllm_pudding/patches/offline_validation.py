"""Patch: `LLM.generate` / `LLM.chat` validate every request's `pudding_*` keys before adding any.

What: wraps `OfflineInferenceMixin._params_to_seq`, the step where vLLM pairs
each prompt with its sampling params, before rendering or adding requests.
Why: the error should name the prompt's index in the caller's list (engine
request ids are a process-wide counter) and nothing should run or be queued.
The keys are read as the caller wrote them, before routing adds the plugin's
own (`requests.check_client_args`: unknown and internal keys, the set id).
(The admission patch would also catch it, after earlier prompts were added and
then aborted.) Removable when: vLLM validates extra_args through a model hook.
"""

from __future__ import annotations

from vllm_pudding.patches import wrap
from vllm_pudding.requests import check_client_args


def apply() -> None:
    from vllm.entrypoints.common.offline import OfflineInferenceMixin

    wrap(OfflineInferenceMixin, "_params_to_seq", _wrap)


def _wrap(original):
    def _params_to_seq(self, params, num_requests):
        from vllm.sampling_params import SamplingParams

        seq = original(self, params, num_requests)
        hf_config = self.model_config.hf_config
        for index, item in enumerate(seq):
            if isinstance(item, SamplingParams):
                check_client_args(hf_config, item.extra_args, f"prompt {index}")
        return seq

    return _params_to_seq
