"""PuddingQwen2ForCausalLM: vLLM's Qwen2 (Qwen2 / Qwen2.5), each request skipping its own
layers.

What differs from Llama is all in vLLM's classes (q/k/v bias, its RMS norms, rope
defaults); PuDDing's part is `models/common.py`. vLLM's Qwen2ForCausalLM builds its
Qwen2Model with no layer hook, so `PuddingBuiltCausalLM` builds it through
`patches/model_build.omitting` on vLLM's `qwen2` module.
"""

from __future__ import annotations

from vllm.model_executor.models import qwen2
from vllm.model_executor.models.qwen2 import Qwen2DecoderLayer, Qwen2ForCausalLM

from vllm_pudding.models.common import PuddingBuiltCausalLM


class PuddingQwen2ForCausalLM(PuddingBuiltCausalLM, Qwen2ForCausalLM):
    """Qwen2 with a pool of omission sets; each request runs at its own depth."""

    vllm_module = qwen2
    decoder_layer = Qwen2DecoderLayer
