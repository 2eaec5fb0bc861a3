"""vllm-pudding: PuDDing (prompt-routed dynamic depth pruning) as a vLLM plugin.

vLLM loads `register()` through the `vllm.general_plugins` entry point in every
process it starts (front end, engine core, workers), so it is cheap, lazy (model
classes are registered as "module:Class" strings) and safe to call many times.
"""

from __future__ import annotations

ARCHITECTURES = {
    "PuddingLlamaForCausalLM": "vllm_pudding.models.llama:PuddingLlamaForCausalLM",
    "PuddingMistralForCausalLM": "vllm_pudding.models.llama:PuddingMistralForCausalLM",
    "PuddingQwen2ForCausalLM": "vllm_pudding.models.qwen2:PuddingQwen2ForCausalLM",
    "PuddingGemma3ForCausalLM": "vllm_pudding.models.gemma3:PuddingGemma3ForCausalLM",
}

_registered = False


def register() -> None:
    """Registers the PuDDing architectures, their config hook and the vLLM patches."""
    global _registered
    if _registered:
        return
    from vllm import ModelRegistry

    from vllm_pudding import engine_config, patches

    for arch, target in ARCHITECTURES.items():
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, target)
    engine_config.register(ARCHITECTURES)
    patches.apply_all()
    _registered = True
