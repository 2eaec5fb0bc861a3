"""PuddingGemma3ForCausalLM: vLLM's text-only Gemma 3, each request skipping its own layers.

What differs from Llama stays in vLLM's classes: the embedding scaled by sqrt(hidden)
(`Gemma3Model.embed_input_ids`, which `run_layers` calls), Gemma's (1 + w) RMS norms
(four per layer, and the final one), q/k norms, GELU, and the interleaved sliding-window /
full-attention layers (each layer's Attention module carries its own window). vLLM keeps
the two attention types in separate KV cache groups; the depth plan builds sub-batches per
group and the KV layer slots count per group (`patches/kv_slots.py`). Like Qwen2, vLLM's
Gemma3ForCausalLM has no layer hook: placeholders go in through
`patches/model_build.omitting` while it builds.
"""

from __future__ import annotations

from vllm.config import VllmConfig
from vllm.model_executor.models import gemma3
from vllm.model_executor.models.gemma3 import Gemma3DecoderLayer, Gemma3ForCausalLM

from vllm_pudding.models.common import OmittedLayer, PuddingCausalLM, run_layers
from vllm_pudding.patches.model_build import omitting


class PuddingGemma3ForCausalLM(PuddingCausalLM, Gemma3ForCausalLM):
    """Text-only Gemma 3 with a pool of omission sets; each request runs at its own depth."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        omitted = self._setup_depth(vllm_config)
        with omitting(gemma3, omitted, OmittedLayer):
            super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._compile_layers(self.model.layers, Gemma3DecoderLayer, vllm_config)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None,
                **extra_layer_kwargs):
        return run_layers(self.model, input_ids, positions, intermediate_tensors,
                          inputs_embeds, **extra_layer_kwargs)
