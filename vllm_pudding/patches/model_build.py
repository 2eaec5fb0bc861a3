"""Patch (scoped): placeholders for never-kept layers while a vLLM model class builds.

What: while a `Pudding<Arch>ForCausalLM` without a layer hook builds (Qwen2, Gemma3),
the `make_layers` name of that architecture's vLLM module builds `OmittedLayer`
placeholders for the layers no candidate keeps, and the real layers for the rest.
Restored as soon as the model is built; other models never see it.
Why: vLLM's Llama takes a `layer_type` (PuddingLlamaForCausalLM uses it), but
Qwen2ForCausalLM and Gemma3ForCausalLM build their inner model and its layers with no
hook. Building every layer and dropping some afterwards would load their weights and
register their Attention modules (a KV cache for layers no request runs); copying the
classes' constructors would fork vLLM's code.
How: `omitting(module, omitted, placeholder)` swaps `module.make_layers` for a wrapper
that calls vLLM's own `make_layers` with a layer function returning `placeholder()` for
omitted indices. Feature-checked: the module must build its layers through
`make_layers(num, layer_fn, prefix)`.
When to remove: when those vLLM model classes take a decoder-layer factory, as Llama's do.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from types import ModuleType
from typing import Callable

from vllm_pudding.depth import layer_index


@contextmanager
def omitting(module: ModuleType, omitted: set[int], placeholder: Callable):
    original = getattr(module, "make_layers", None)
    if original is None or list(inspect.signature(original).parameters)[:3] != \
            ["num_hidden_layers", "layer_fn", "prefix"]:
        raise RuntimeError(f"vllm-pudding: {module.__name__} does not build its layers through "
                           "make_layers(num_hidden_layers, layer_fn, prefix); this vLLM build "
                           "is not the one vllm-pudding supports (0.32.0)")

    def make_layers(num_hidden_layers, layer_fn, prefix):
        def build(prefix: str):
            return placeholder() if layer_index(prefix) in omitted else layer_fn(prefix=prefix)

        return original(num_hidden_layers, build, prefix)

    module.make_layers = make_layers
    try:
        yield
    finally:
        module.make_layers = original
