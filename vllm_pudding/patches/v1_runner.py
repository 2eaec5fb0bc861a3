"""Patch: PuDDing models run on vLLM's V1 model runner.

What: wraps `VllmConfig._get_v2_model_runner_unsupported_features` to list
"PuDDing per-request depth" for models with a `pudding` config section.
Why: the per-row depth plan hooks the V1 runner (see runner_step). On GPU,
vLLM 0.32 defaults to Model Runner V2; listing the feature as unsupported is
vLLM's own mechanism for falling back to V1, with its usual log line. (On CPU
V1 is used anyway: V2 needs Triton.) An explicit VLLM_USE_V2_MODEL_RUNNER=1
still wins in vLLM; the config hook rejects it with a clear error.
Removable when: a V2 path exists (model state via `get_model_state_cls()`).
"""

from __future__ import annotations

from vllm_pudding.patches import wrap

FEATURE = "PuDDing per-request depth (vllm-pudding)"


def apply() -> None:
    from vllm.config import VllmConfig

    wrap(VllmConfig, "_get_v2_model_runner_unsupported_features", _wrap)


def _wrap(original):
    def _get_v2_model_runner_unsupported_features(self):
        unsupported = list(original(self))
        hf_config = getattr(self.model_config, "hf_config", None)
        if hf_config is not None and getattr(hf_config, "pudding", None) is not None:
            unsupported.append(FEATURE)
        return unsupported

    return _get_v2_model_runner_unsupported_features
