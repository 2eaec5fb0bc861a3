"""PuddingLlamaForCausalLM: vLLM's Llama, each request skipping its own layers.

Subclasses vLLM's `LlamaForCausalLM`/`LlamaModel` instead of copying them: the
layers, attention and weight mapping stay vLLM's. What changes:
- layers that no candidate keeps are built as parameter-free placeholders (no
  weights loaded, no Attention module, hence no KV cache);
- the layer loop runs each layer on the rows (requests) that keep it, using the
  step plan that `vllm_pudding.depth` builds from the runner's batch;
- each kept layer's body is compiled, by default on CPU unless the user asked
  for eager mode, elsewhere when asked (`vllm_pudding.layer_compile`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from vllm.compilation.decorators import ignore_torch_compile
from vllm.config import VllmConfig
from vllm.model_executor.models.llama import (
    LlamaDecoderLayer,
    LlamaForCausalLM,
    LlamaModel,
)

from vllm_pudding import depth, layer_compile
from vllm_pudding.config import from_hf_config

class OmittedLayer(nn.Module):
    """Stands in for a layer that every candidate omits: no weights, no KV."""

    def forward(self, positions, hidden_states, residual, **_):
        return hidden_states, residual


def _layer_factory(omitted: set[int]):
    """A `layer_type` for LlamaModel that builds placeholders for `omitted` layers."""

    def build(*, vllm_config: VllmConfig, prefix: str = "", **kwargs) -> nn.Module:
        if depth.layer_index(prefix) in omitted:
            return OmittedLayer()
        return LlamaDecoderLayer(vllm_config=vllm_config, prefix=prefix, **kwargs)

    return build


def _engine_router(vllm_config: VllmConfig, pudding):
    """The hidden router, run by the worker (kept out of the module tree: no checkpoint
    weights of its own, so vLLM's loader must not see it)."""
    from vllm_pudding.router.in_engine import load_engine_router

    model_config = vllm_config.model_config
    return load_engine_router(model_config.model, pudding, model_config.hf_config.hidden_size,
                              torch.device(vllm_config.device_config.device))


@ignore_torch_compile  # the per-row layer loop is data dependent
class PuddingLlamaModel(LlamaModel):
    """LlamaModel whose layer loop follows the step's per-row depth plan."""

    def forward(self, input_ids, positions, intermediate_tensors=None,
                inputs_embeds=None, **extra_layer_kwargs):
        if intermediate_tensors is not None:
            raise NotImplementedError("vllm-pudding does not support pipeline parallelism")
        hidden = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
        runner = depth.LayerRunner(positions, hidden, extra_layer_kwargs)
        route_after = depth.route_after()
        for idx in range(self.start_layer, self.end_layer):
            layer = self.layers[idx]
            if not isinstance(layer, OmittedLayer):
                runner.run(idx, layer)
            if idx == route_after:
                runner.route()  # unrouted rows get their set before any layer they omit
        hidden, _ = self.norm(*runner.states())
        return hidden


class PuddingLlamaForCausalLM(LlamaForCausalLM):
    """Llama with a pool of omission sets; each request runs at its own depth."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", **kwargs):
        pudding = from_hf_config(vllm_config.model_config.hf_config)
        if pudding is None:
            raise ValueError("PuddingLlamaForCausalLM needs a 'pudding' section in config.json")
        self.omitted_layers = pudding.omitted_by_all()
        hf_config = vllm_config.model_config.hf_config
        depth.configure(pudding, hf_config.num_hidden_layers, _engine_router(vllm_config, pudding))
        super().__init__(vllm_config=vllm_config, prefix=prefix,
                         layer_type=_layer_factory(self.omitted_layers))

    def _init_model(self, vllm_config: VllmConfig, prefix: str = "", layer_type=LlamaDecoderLayer):
        model = PuddingLlamaModel(vllm_config=vllm_config, prefix=prefix, layer_type=layer_type)
        if layer_compile.requested(vllm_config):
            layer_compile.compile_layers(model.layers, LlamaDecoderLayer,
                                         vllm_config.device_config.device_type)
        return model

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        kept = ((name, w) for name, w in weights
                if depth.layer_index(name) not in self.omitted_layers)
        return super().load_weights(kept)
