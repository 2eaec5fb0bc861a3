"""Patch: publish each step's per-row depth plan from the V1 model runner.

What: wraps `GPUModelRunner._build_attention_metadata` (the CPU runner inherits
it), `GPUModelRunner._dummy_run` and `AttentionGroup.build_metadata`.
Why: the model needs, per step, which request each batch row is and the step's
`CommonAttentionMetadata` per attention group, to build sub-batch metadata for
the rows that keep a layer. The V1 runner exposes neither to the model.
Removable when: vLLM offers a model-level per-step hook on the V1 runner (the
V2 runner's `get_model_state_cls()` is one; a V2 path would use it instead).
"""

from __future__ import annotations

import inspect

from vllm_pudding import depth
from vllm_pudding.patches import wrap


def apply() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    from vllm.v1.worker.utils import AttentionGroup

    wrap(AttentionGroup, "build_metadata", _wrap_group_build)
    wrap(GPUModelRunner, "_build_attention_metadata", _wrap_runner_build)
    wrap(GPUModelRunner, "_dummy_run", _wrap_dummy_run)


def _wrap_group_build(original):
    def build_metadata(self, common_attn_metadata, ubatch_idx=0, *args, **kwargs):
        if depth.is_active():
            depth.record_group(self, common_attn_metadata, ubatch_idx)
        return original(self, common_attn_metadata, ubatch_idx, *args, **kwargs)

    return build_metadata


def _wrap_runner_build(original):
    signature = inspect.signature(original)
    if "num_reqs" not in signature.parameters:
        raise RuntimeError("vllm-pudding: _build_attention_metadata has no num_reqs parameter")

    def _build_attention_metadata(self, *args, **kwargs):
        if not depth.is_active():
            return original(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        depth.begin_step()
        out = original(self, *args, **kwargs)
        depth.end_step(self, out[0], bound.arguments["num_reqs"])
        return out

    return _build_attention_metadata


def _wrap_dummy_run(original):
    def _dummy_run(self, *args, **kwargs):
        with depth.dummy_run():
            return original(self, *args, **kwargs)

    return _dummy_run
