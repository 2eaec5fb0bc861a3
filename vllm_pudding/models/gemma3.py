"""PuddingGemma3ForCausalLM: vLLM's text-only Gemma 3, each request skipping its own layers.

What differs from Llama stays in vLLM's classes: the embedding scaled by sqrt(hidden)
(`Gemma3Model.embed_input_ids`, which `run_layers` calls), Gemma's (1 + w) RMS norms
(four per layer, and the final one), q/k norms, GELU, and the interleaved sliding-window /
full-attention layers (each layer's Attention module carries its own window). vLLM keeps
the two attention types in separate KV cache groups; the depth plan builds sub-batches per
group and the KV layer slots count per group (`patches/kv_slots.py`). Like Qwen2, vLLM's
Gemma3ForCausalLM has no layer hook: `PuddingBuiltCausalLM` builds it through
`patches/model_build.omitting` on vLLM's `gemma3` module.
"""

from __future__ import annotations

from vllm.model_executor.models import gemma3
from vllm.model_executor.models.gemma3 import Gemma3DecoderLayer, Gemma3ForCausalLM

from vllm_pudding.models.common import PuddingBuiltCausalLM


class PuddingGemma3ForCausalLM(PuddingBuiltCausalLM, Gemma3ForCausalLM):
    """Text-only Gemma 3 with a pool of omission sets; each request runs at its own depth."""

    vllm_module = gemma3
    decoder_layer = Gemma3DecoderLayer
