"""Patch: KV cache storage only for the layers each request keeps.

What: wraps `kv_cache_utils._pool_bytes_per_block` and
`kv_cache_utils.get_kv_cache_config_from_groups` (engine core: how many blocks
fit), the runner module's `allocate_kv_cache` (worker: the views) and
`GPUModelRunner._zero_block_ids`.
Why: every candidate omits exactly k of L layers, so a request needs KV for
L - k layers. A block holds L - k *layer slots* instead of one page per built
layer: the block manager sees L/(L-k) times more blocks in the same memory. A
request's layer l lives in slot j = rank of l among the layers its set keeps;
slot j of block b is page j * num_blocks + b of one shared region, which every
attention layer views whole. `vllm_pudding.depth` offsets each row's block
table and slot mapping by j * num_blocks per layer.
Several KV cache groups (Gemma 3: sliding-window and full-attention layers): vLLM
gives every group the same bytes per block (its layers' pages, padded to the largest
group) out of one shared block pool, a block belonging to one group at a time. Slots
count per group: a request's layer l lives in the slot of its rank among the layers its
set keeps *in l's group*, and a block holds as many slots as the largest such count over
sets and groups (the group size when some set keeps a whole group: then no saving).
How: the block budget divides memory by that many pages per block instead of the
largest group's; one KVCacheTensor with layer stride 0 spans slots * num_blocks pages,
and every attention layer of every group views it whole; workers learn the groups'
layers from the KV cache config (`depth.set_kv_layout`); zeroing a block zeroes all its
slots. Needs one page size for all layers and a layer-outer layout (the CPU default,
LBHNC); anything else raises NotImplementedError at start-up.
Removable when: vLLM supports per-request layer subsets in its KV manager.
"""

from __future__ import annotations

import dataclasses

from vllm_pudding import depth
from vllm_pudding.config import from_hf_config
from vllm_pudding.patches import on_cpu, wrap


def apply() -> None:
    from vllm.v1.core import kv_cache_utils
    from vllm.v1.worker import gpu_model_runner

    # Module-level functions: their callers look them up in the module at call time.
    wrap(kv_cache_utils, "_pool_bytes_per_block", _wrap_bytes_per_block)
    wrap(kv_cache_utils, "get_kv_cache_config_from_groups", _wrap_config)
    wrap(gpu_model_runner, "allocate_kv_cache", _wrap_allocate)
    wrap(gpu_model_runner.GPUModelRunner, "_zero_block_ids", _wrap_zero)
    if on_cpu():  # the CPU runner overrides _zero_block_ids
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner

        wrap(CPUModelRunner, "_zero_block_ids", _wrap_zero)


def slots_per_block(vllm_config, groups) -> tuple[int, int] | None:
    """(layer slots per block, layers of the largest KV group) for PuDDing models, else
    None. `groups`: vLLM's KVCacheGroupSpecs."""
    model_config = getattr(vllm_config, "model_config", None)
    hf_config = getattr(model_config, "hf_config", None)
    pool = from_hf_config(hf_config) if hf_config is not None else None
    if pool is None:
        return None
    _check_groups(groups)
    layers = group_layers(groups)
    return depth.slots_needed(pool, layers), max(len(g) for g in layers)


def group_layers(groups) -> list[list[int]]:
    """Decoder layer indices of each KV cache group's attention layers."""
    return [[depth.layer_index(name) for name in g.layer_names] for g in groups]


def _check_groups(groups) -> None:
    if any(g.host_resident for g in groups):
        raise NotImplementedError("vllm-pudding KV slots do not support host-resident KV groups")
    pages = {_page_bytes(g.kv_cache_spec, name) for g in groups for name in g.layer_names}
    if len(pages) != 1:
        raise NotImplementedError("vllm-pudding KV slots need one KV page size for all layers "
                                  f"(this model has {sorted(pages)})")


def _page_bytes(spec, layer_name: str) -> int:
    specs = getattr(spec, "kv_cache_specs", None)  # UniformTypeKVCacheSpecs
    return (specs[layer_name] if specs else spec).page_size_bytes


def _no_zeroing(config) -> None:
    """vLLM zeroes new blocks (Mamba state, mixed-precision KV) through per-layer segment
    tables of the stock layout; PuDDing's slot layout needs neither case."""
    if getattr(config, "needs_kv_cache_zeroing", False):
        raise NotImplementedError("vllm-pudding KV slots do not support KV cache zeroing "
                                  "(Mamba layers or mixed-precision KV cache)")


def _wrap_bytes_per_block(original):
    def _pool_bytes_per_block(vllm_config, kv_cache_groups):
        full = original(vllm_config, kv_cache_groups)
        slots = slots_per_block(vllm_config, kv_cache_groups) if kv_cache_groups else None
        if slots is None:
            return full
        num_slots, largest_group = slots
        return full // largest_group * num_slots

    return _pool_bytes_per_block


def _wrap_config(original):
    def get_kv_cache_config_from_groups(vllm_config, kv_cache_groups, available_memory):
        slots = slots_per_block(vllm_config, kv_cache_groups) if kv_cache_groups else None
        if slots is None:
            return original(vllm_config, kv_cache_groups, available_memory)
        num_slots, largest_group = slots
        # The stock planner divides by the largest group's pages per block; give it the
        # memory that makes its block count what `num_slots` pages per block allow.
        config = original(vllm_config, kv_cache_groups,
                          available_memory * largest_group // num_slots)
        _no_zeroing(config)
        return _slot_layout(config, num_slots)

    return get_kv_cache_config_from_groups


def _slot_layout(config, num_slots: int):
    """One tensor for every layer of every group: slots * num_blocks pages."""
    tensors, nb = config.kv_cache_tensors, config.num_blocks
    tensor = tensors[0]
    for t in tensors:
        if t.layer_stride != t.block_stride * nb or t.block_stride != tensor.block_stride:
            raise NotImplementedError(
                "vllm-pudding KV slots need a layer-outer KV cache layout (e.g. LBHNC)")
    slot_tensor = dataclasses.replace(tensor, size=tensor.block_stride * nb * num_slots,
                                      layers=[name for t in tensors for name in t.layers],
                                      layer_stride=0, offset=0)
    return dataclasses.replace(config, kv_cache_tensors=[slot_tensor])


def _wrap_allocate(original):
    def allocate_kv_cache(kv_cache_config, *args, **kwargs):
        if not depth.is_active():
            return original(kv_cache_config, *args, **kwargs)
        depth.set_kv_layout(kv_cache_config.num_blocks,
                            group_layers(kv_cache_config.kv_cache_groups))
        (tensor,) = kv_cache_config.kv_cache_tensors
        pages = kv_cache_config.num_blocks * depth.num_slots()
        # vLLM's view builder wants positive strides: view the region once, for one
        # layer, as `pages` blocks, and give every layer that same view.
        one = dataclasses.replace(tensor, layers=tensor.layers[:1],
                                  layer_stride=tensor.block_stride * pages)
        view = original(dataclasses.replace(kv_cache_config, num_blocks=pages,
                                            kv_cache_tensors=[one]), *args, **kwargs)
        return {name: view[tensor.layers[0]] for name in tensor.layers}

    return allocate_kv_cache


def _wrap_zero(original):
    def _zero_block_ids(self, block_ids):
        if depth.is_active() and block_ids:
            block_ids = depth.all_slot_blocks(block_ids)
        return original(self, block_ids)

    return _zero_block_ids
