"""The vLLM configurations PuDDing serves correctly; every other one is refused at start.

Why: a PuDDing request keeps KV only for its kept layers (one shared region of layer
slots per block, counted per KV cache group, `patches/kv_slots.py`), and each layer runs
on the row subset that keeps it, with sub-batch attention metadata built by vLLM's own builders
(`depth.py`). A vLLM feature that assumes one KV page per layer per block, builds
per-token state for the whole batch, or runs a second model on the same KV, would
silently corrupt outputs or hang the engine. None of them can be run on a GPU here (no
vLLM on the GPU machine), so each is refused in the front end, before any engine
starts, with a message naming the setting (`check`), and what only the worker can see
(the attention backend it picked, kernel block sizes) is checked once the runner has
built its attention groups (`check_attention_groups`).
"""

from __future__ import annotations

import os
from typing import Any, Callable

SUPPORTED_BACKENDS = ("FLASH_ATTN", "TRITON_ATTN", "CPU_ATTN")
"""Attention backends whose metadata builder recomputes everything per build from the
CommonAttentionMetadata it is given (eager mode) and whose metadata carries a
block_table and slot_mapping the KV-slot layout can retarget. FlashInfer has no
block_table and re-plans wrappers it shares between builds, so sub-batches built in
one step overwrite each other."""

DEFAULT_BACKEND_ORDER = ("FLASH_ATTN", "TRITON_ATTN")
"""Automatic selection on CUDA GPUs: the first of these that vLLM finds valid."""


def check(vllm_config: Any) -> None:
    """Raises ValueError listing every setting of `vllm_config` PuDDing cannot serve."""
    problems = [msg for rule in RULES if (msg := rule(vllm_config))]
    if problems:
        raise ValueError("vllm-pudding cannot serve this configuration: "
                         + "; ".join(problems))


def _v2_runner(cfg) -> str | None:
    """The depth plan hooks the V1 runner (patches/runner_step.py); the V2 runner would
    fail on the first forward ("no depth plan") or write every layer to one KV page."""
    causes = []
    if getattr(cfg.attention_config, "hisparse_config", None) is not None:
        causes.append("hisparse_config")
    if getattr(cfg, "watermark_config", None) is not None:
        causes.append("watermark_config")
    if os.environ.get("VLLM_USE_V2_MODEL_RUNNER", "").lower() in ("1", "true"):
        causes.append("VLLM_USE_V2_MODEL_RUNNER=1")
    if causes:
        return (f"{' and '.join(causes)} force vLLM's Model Runner V2, and PuDDing runs on the "
                "V1 model runner only: unset them")
    return None


def _pipeline_parallel(cfg) -> str | None:
    if cfg.parallel_config.pipeline_parallel_size > 1:
        return "pipeline parallelism (pipeline_parallel_size > 1) is not supported"
    return None


def _context_parallel(cfg) -> str | None:
    pc = cfg.parallel_config
    if getattr(pc, "decode_context_parallel_size", 1) > 1 or \
            getattr(pc, "prefill_context_parallel_size", 1) > 1:
        return ("context parallelism (decode/prefill_context_parallel_size > 1) shards KV "
                "pages across ranks, which the KV-slot layout does not model")
    return None


def _micro_batching(cfg) -> str | None:
    if getattr(cfg.parallel_config, "use_ubatching", False):
        return ("micro-batching (enable_dbo / ubatch_size > 1) splits a step's rows between "
                "metadata builds; the depth plan covers one build per step")
    return None


def _speculative(cfg) -> str | None:
    if cfg.speculative_config is not None:
        return ("speculative decoding: draft layers would write unshifted slot-0 KV pages and "
                "the depth plan has no rows for draft tokens")
    return None


def _lora(cfg) -> str | None:
    if cfg.lora_config is not None:
        return "LoRA: its token-to-adapter maps are built for the whole batch, not row subsets"
    return None


def _kv_transfer(cfg) -> str | None:
    if cfg.kv_transfer_config is not None or \
            getattr(cfg.cache_config, "kv_offloading_size", None) is not None:
        return ("KV connectors and KV offloading (kv_transfer_config, kv_offloading_size) move "
                "KV pages with the stock one-page-per-layer layout, not PuDDing's layer slots")
    return None


def _partial_prefix(cfg) -> str | None:
    """Prefix hits inside a block (finer hashing than the block) are served by copying the
    hit block (copy-on-write) with the stock layout's page arithmetic, which would copy
    the wrong layer slots. The unit matters only to models with several KV cache groups
    (with one, vLLM rejects any other value); the platform may still change the block size
    after this hook, so any explicit unit is refused."""
    unit = getattr(cfg.cache_config, "prefix_match_unit", None)
    if unit is not None:
        return (f"prefix_match_unit={unit} (partial-block prefix matching copies KV blocks "
                "with the one-page-per-layer layout); leave it unset")
    return None


def _hybrid(cfg) -> str | None:
    if getattr(cfg.model_config, "is_hybrid", False):
        return ("hybrid attention/Mamba models keep Mamba state and need KV zeroing, which "
                "PuDDing's KV layer slots do not model")
    return None


def _attention_backend(cfg) -> str | None:
    ac = cfg.attention_config
    chosen = [b for b in (ac.backend, *getattr(ac, "backend_per_kind", {}).values())
              if b is not None]
    bad = sorted({b.name for b in chosen if b.name not in SUPPORTED_BACKENDS})
    if bad:
        return (f"attention backend {', '.join(bad)} cannot run per-request depth "
                f"(supported: {', '.join(SUPPORTED_BACKENDS)})")
    return None


def _platform(cfg) -> str | None:
    from vllm.platforms import current_platform

    if current_platform.is_cpu() or current_platform.is_cuda_alike():
        return None
    return (f"platform {current_platform.device_name!r}: vllm-pudding supports CUDA, ROCm "
            "(Triton attention) and CPU")


RULES: tuple[Callable[[Any], str | None], ...] = (
    _platform, _v2_runner, _pipeline_parallel, _context_parallel, _micro_batching,
    _speculative, _lora, _kv_transfer, _partial_prefix, _hybrid, _attention_backend,
)


def choose_default_backend(cfg) -> None:
    """ROCm picks its own backends first (ROCM_ATTN, AITER), none of them supported here:
    ask for Triton attention unless the user chose. CUDA's automatic choice is narrowed to
    DEFAULT_BACKEND_ORDER by `patches/attention_backend.py`; CPU has only CPU_ATTN."""
    from vllm.platforms import current_platform

    if current_platform.is_rocm() and cfg.attention_config.backend is None:
        from vllm.v1.attention.backends.registry import AttentionBackendEnum

        cfg.attention_config.backend = AttentionBackendEnum.TRITON_ATTN


def check_attention_groups(attn_groups) -> None:
    """Worker, once the runner built its attention groups: what the config could not show.

    Raises ValueError naming the backend or setting; runs at engine start, never mid-serving.
    """
    groups = [g for per_kv_group in attn_groups for g in per_kv_group]
    for group in groups:
        name = group.backend.get_name()
        if name not in SUPPORTED_BACKENDS:
            raise ValueError(
                f"vllm-pudding: attention backend {name} cannot run per-request depth "
                f"(supported: {', '.join(SUPPORTED_BACKENDS)}); choose one with "
                "--attention-backend")
        if group.kernel_block_size is not None:
            raise ValueError(
                f"vllm-pudding: backend {name} splits each KV block of "
                f"{group.kv_cache_spec.block_size} tokens into kernel blocks of "
                f"{group.kernel_block_size}, which the KV-slot layout does not model; choose "
                "a --block-size the backend supports natively")
