"""PuddingLlamaForCausalLM (and PuddingMistralForCausalLM): vLLM's Llama, each request
skipping its own layers.

Subclasses vLLM's `LlamaForCausalLM`/`LlamaModel` instead of copying them: the layers,
attention and weight mapping stay vLLM's; what PuDDing changes is in `models/common.py`.
Llama offers the hooks PuDDing needs (`_init_model`, `layer_type`), so no vLLM global is
swapped here. vLLM serves HF Mistral checkpoints with a Llama subclass whose decoder layer
only adds optional extras (Llama-4 attention scaling, ada-RMS-norm); the Mistral variant
reuses everything here with that layer class.
"""

from __future__ import annotations

from torch import nn
from vllm.compilation.decorators import ignore_torch_compile
from vllm.config import VllmConfig
from vllm.model_executor.models.llama import (
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
)
from vllm.model_executor.models.mistral import MistralDecoderLayer, MistralForCausalLM

from vllm_pudding import depth
from vllm_pudding.models.common import OmittedLayer, PuddingCausalLM, run_layers


def _layer_factory(omitted: set[int], layer_cls: type):
    """A `layer_type` for LlamaModel that builds placeholders for `omitted` layers."""

    def build(*, vllm_config: VllmConfig, prefix: str = "", **kwargs) -> nn.Module:
        if depth.layer_index(prefix) in omitted:
            return OmittedLayer()
        return layer_cls(vllm_config=vllm_config, prefix=prefix, **kwargs)

    return build


@ignore_torch_compile  # the per-row layer loop is data dependent
class PuddingLlamaModel(LlamaModel):
    """LlamaModel whose layer loop follows the step's per-row depth plan."""

    def forward(self, input_ids, positions, intermediate_tensors=None,
                inputs_embeds=None, **extra_layer_kwargs):
        return run_layers(self, input_ids, positions, intermediate_tensors, inputs_embeds,
                          **extra_layer_kwargs)


class PuddingLlamaForCausalLM(PuddingCausalLM, LlamaForCausalLM):
    """Llama with a pool of omission sets; each request runs at its own depth."""

    decoder_layer: type = LlamaDecoderLayer

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", **kwargs):
        omitted = self._setup_depth(vllm_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix,
                         layer_type=_layer_factory(omitted, self.decoder_layer))

    def _init_model(self, vllm_config: VllmConfig, prefix: str = "", layer_type=LlamaDecoderLayer):
        model = PuddingLlamaModel(vllm_config=vllm_config, prefix=prefix, layer_type=layer_type)
        self._compile_layers(model.layers, vllm_config)
        return model


class PuddingMistralForCausalLM(PuddingLlamaForCausalLM, MistralForCausalLM):
    """HF Mistral checkpoints: the Llama variant with vLLM's Mistral decoder layer and
    weight remapping (MistralForCausalLM.load_weights, after PuDDing's filter)."""

    decoder_layer = MistralDecoderLayer
