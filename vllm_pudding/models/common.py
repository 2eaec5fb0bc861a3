"""What every `Pudding<Arch>ForCausalLM` shares: the per-request depth mechanism.

Why one module: the architectures differ only in their decoder layer class, norms and
embedding (Gemma scales it); vLLM's own model classes keep all of that. What PuDDing
changes is the same for each, and lives here:
- layers that no candidate keeps are built as parameter-free placeholders
  (`OmittedLayer`: no weights loaded, no Attention module, hence no KV cache);
- the decoder's forward runs each layer on the rows (requests) that keep it, using the
  step plan `vllm_pudding.depth` builds from the runner's batch (`run_layers`: the
  model's own `embed_input_ids`, `layers` and final `norm`, so Gemma's scaled
  embedding and its norms come with the model);
- the pool and the router are set up per worker, and checkpoint weights of never-built
  layers are dropped before vLLM's loader sees them (`PuddingCausalLM`);
- each kept layer's body is compiled when asked (`vllm_pudding.layer_compile`).
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType

import torch
from torch import nn
from vllm.config import VllmConfig

from vllm_pudding import depth, layer_compile
from vllm_pudding.config import from_hf_config
from vllm_pudding.patches.model_build import omitting


class OmittedLayer(nn.Module):
    """Stands in for a layer that every candidate omits: no weights, no KV."""

    def forward(self, positions, hidden_states, residual, **_):
        return hidden_states, residual


def run_layers(model: nn.Module, input_ids, positions, intermediate_tensors=None,
               inputs_embeds=None, **extra_layer_kwargs) -> torch.Tensor:
    """A vLLM decoder model's forward (`model`: LlamaModel, Qwen2Model, Gemma3Model, ...)
    with the per-row layer loop: embed, each built layer on the rows that keep it, the
    in-engine router after its layer, the final norm."""
    if intermediate_tensors is not None:
        raise NotImplementedError("vllm-pudding does not support pipeline parallelism")
    hidden = inputs_embeds if inputs_embeds is not None else model.embed_input_ids(input_ids)
    runner = depth.LayerRunner(positions, hidden, extra_layer_kwargs)
    route_after = depth.route_after()
    for idx in range(model.start_layer, model.end_layer):
        layer = model.layers[idx]
        if not isinstance(layer, OmittedLayer):
            runner.run(idx, layer)
        if idx == route_after:
            runner.route()  # unrouted rows get their set before any layer they omit
    hidden, _ = model.norm(*runner.states())
    return hidden


def _engine_router(vllm_config: VllmConfig, pudding):
    """The hidden router, run by the worker (kept out of the module tree: no checkpoint
    weights of its own, so vLLM's loader must not see it)."""
    from vllm_pudding.router.in_engine import load_engine_router

    model_config = vllm_config.model_config
    return load_engine_router(model_config.model, pudding,
                              model_config.hf_config.get_text_config().hidden_size,
                              torch.device(vllm_config.device_config.device))


class PuddingCausalLM:
    """Mixin in front of a vLLM `<Arch>ForCausalLM`: pool set-up, weight filter, compile.
    `decoder_layer` names the architecture's decoder layer class (compiled per layer)."""

    decoder_layer: type
    omitted_layers: set[int] = set()

    def _setup_depth(self, vllm_config: VllmConfig) -> set[int]:
        """Reads the pool from config.json, configures this worker's depth plan; returns
        the layers no candidate keeps (call before building the model's layers)."""
        hf_config = vllm_config.model_config.hf_config
        pudding = from_hf_config(hf_config)
        if pudding is None:
            raise ValueError(f"{type(self).__name__} needs a 'pudding' section in config.json")
        depth.configure(pudding, hf_config.num_hidden_layers, _engine_router(vllm_config, pudding))
        self.omitted_layers = pudding.omitted_by_all()
        return self.omitted_layers

    def _compile_layers(self, layers: nn.ModuleList, vllm_config: VllmConfig) -> None:
        if layer_compile.requested(vllm_config):
            layer_compile.compile_layers(layers, self.decoder_layer,
                                         vllm_config.device_config.device_type)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        kept = ((name, w) for name, w in weights
                if depth.layer_index(name) not in self.omitted_layers)
        return super().load_weights(kept)


class PuddingBuiltCausalLM(PuddingCausalLM):
    """For vLLM `<Arch>ForCausalLM` classes with no decoder-layer hook (Qwen2, Gemma3):
    builds them with placeholders for never-kept layers (`patches/model_build.omitting`
    on `vllm_module`) and replaces their forward by the per-row loop (the inner
    `<Arch>Model.forward` is never called). A subclass names what differs:
    `vllm_module` (where vLLM's class builds its layers) and `decoder_layer`."""

    vllm_module: ModuleType

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        omitted = self._setup_depth(vllm_config)
        with omitting(self.vllm_module, omitted, OmittedLayer):
            super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._compile_layers(self.model.layers, vllm_config)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None,
                **extra_layer_kwargs):
        return run_layers(self.model, input_ids, positions, intermediate_tensors,
                          inputs_embeds, **extra_layer_kwargs)
