"""PuddingQwen2ForCausalLM: vLLM's Qwen2 (Qwen2 / Qwen2.5), each request skipping its own
layers.

What differs from Llama is all in vLLM's classes (q/k/v bias, its RMS norms, rope
defaults); PuDDing's part is `models/common.py`. vLLM's Qwen2ForCausalLM builds its
Qwen2Model with no layer hook, so the placeholders for never-kept layers go in through
`patches/model_build.omitting` while it builds, and the per-row loop replaces the
model's forward from here (the inner Qwen2Model is never called).
"""

from __future__ import annotations

from vllm.config import VllmConfig
from vllm.model_executor.models import qwen2
from vllm.model_executor.models.qwen2 import Qwen2DecoderLayer, Qwen2ForCausalLM

from vllm_pudding.models.common import OmittedLayer, PuddingCausalLM, run_layers
from vllm_pudding.patches.model_build import omitting


class PuddingQwen2ForCausalLM(PuddingCausalLM, Qwen2ForCausalLM):
    """Qwen2 with a pool of omission sets; each request runs at its own depth."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        omitted = self._setup_depth(vllm_config)
        with omitting(qwen2, omitted, OmittedLayer):
            super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._compile_layers(self.model.layers, Qwen2DecoderLayer, vllm_config)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None,
                **extra_layer_kwargs):
        return run_layers(self.model, input_ids, positions, intermediate_tensors,
                          inputs_embeds, **extra_layer_kwargs)
