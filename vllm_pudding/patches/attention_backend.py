"""Patch: PuDDing models get an attention backend their sub-batch metadata is correct for.

What: wraps `GPUModelRunner.initialize_metadata_builders` (every platform: the CPU runner
inherits it) and, on CUDA only, `CudaPlatform.get_valid_backends`.
Why: `depth.py` builds metadata for row subsets with the backend's own builder and
retargets block tables per layer (KV slots); only the backends in
`supported.SUPPORTED_BACKENDS` allow that. FlashInfer, CUDA's automatic choice on some
GPUs (SM100), has no block_table and shares planned wrappers between builds. So:
- on CUDA, vLLM's automatic choice is made among `supported.DEFAULT_BACKEND_ORDER` only
  (vLLM's own validity checks still decide between them); an explicit unsupported choice is
  refused earlier, at config time (`supported.check`);
- in every worker, once the attention groups exist, `supported.check_attention_groups`
  refuses any backend or kernel block split that slipped through, at engine start.
How: the CUDA wrapper drops candidates outside the supported list when the config being
built is a PuDDing one (`get_current_vllm_config_or_none`: vLLM selects backends inside
the model's config context); other models are untouched. `vllm.platforms.cuda` is
imported only when the platform is CUDA (it cannot import elsewhere).
When to remove: when FlashInfer (or vLLM) supports per-row-subset metadata and per-layer
block tables, or vLLM exposes a per-model backend allow-list.
"""

from __future__ import annotations

from vllm_pudding import depth, supported
from vllm_pudding.patches import wrap


def apply() -> None:
    from vllm.platforms import current_platform
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    wrap(GPUModelRunner, "initialize_metadata_builders", _wrap_builders)
    if current_platform.is_cuda():
        from vllm.platforms.cuda import CudaPlatform

        wrap(CudaPlatform, "get_valid_backends", _wrap_valid_backends)


def _wrap_builders(original):
    def initialize_metadata_builders(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if depth.is_active():
            supported.check_attention_groups(self.attn_groups)
        return out

    return initialize_metadata_builders


def _wrap_valid_backends(original):
    func = original.__func__  # a classmethod, seen through the class

    def get_valid_backends(cls, *args, **kwargs):
        valid, invalid = func(cls, *args, **kwargs)
        if not _building_pudding_model():
            return valid, invalid
        kept = restrict_candidates(valid)
        dropped = {c.backend for c in valid} - {c.backend for c in kept}
        # vLLM lists these reasons when nothing valid is left.
        invalid = {**invalid, **{b: (99, ["not supported by vllm-pudding"]) for b in dropped}}
        return kept, invalid

    return classmethod(get_valid_backends)


def restrict_candidates(valid: list) -> list:
    """vLLM's valid backend candidates, narrowed to the ones PuDDing supports, in
    `supported.DEFAULT_BACKEND_ORDER` (the lowest priority value wins in vLLM)."""
    order = {name: i for i, name in enumerate(supported.DEFAULT_BACKEND_ORDER)}
    kept = [c for c in valid if c.backend.name in order]
    return [c._replace(priority=order[c.backend.name]) for c in kept]


def _building_pudding_model() -> bool:
    from vllm.config import get_current_vllm_config_or_none

    from vllm_pudding.config import SECTION

    cfg = get_current_vllm_config_or_none()
    hf_config = getattr(getattr(cfg, "model_config", None), "hf_config", None)
    return getattr(hf_config, SECTION, None) is not None
