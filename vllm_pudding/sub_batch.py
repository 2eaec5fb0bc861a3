"""The rows of one step that run some of its layers: their tokens, attention metadata and
KV-slot tables, all built before the forward.

Why this shape: vLLM builds one attention metadata per step for all rows. A layer must
run only on the rows whose omission set keeps it, so the rows that keep a layer form a
sub-batch: the token indices of those rows, and attention metadata for exactly those rows
(built by vLLM's own metadata builder from a row subset of the step's
`CommonAttentionMetadata`). Layers sharing a row mask share the sub-batch. With KV slots
every layer of a row reads and writes its own pages, so each layer also gets its own
block table and slot mapping (`kv_slots`).

Everything a sub-batch needs is built when the plan is made, from index arrays moved to
the device in one copy (`transfer.to_device`): the layer loop only swaps prepared
metadata in and indexes device tensors. Block tables are built only for the layers that
use the sub-batch, only as wide as the step's longest sequence, into one persistent
buffer (`TableArena`).
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch


class SubBatch:
    """Rows that run `layers` (all of one attention group) in one step.

    `whole`: every row of the step (the step's own metadata, retargeted per layer for KV
    slots); else `token_index` holds the rows' tokens on the device.
    """

    def __init__(self, rows: np.ndarray, layers: list[int], names: list[str], whole: bool):
        self.rows, self.layers, self.names, self.whole = rows, layers, names, whole
        self.token_index: torch.Tensor | None = None
        self.per_layer: dict[int, tuple[Any, torch.Tensor | None]] = {}

    def host_arrays(self, qsl: np.ndarray, slot_offsets: np.ndarray | None) -> list[np.ndarray]:
        """What `finish` needs on the device, in the order it reads them."""
        rows = self.rows
        lens = qsl[rows + 1].astype(np.int64) - qsl[rows]
        arrays = []
        if not self.whole:
            arrays += [token_index(qsl, rows), rows, np.concatenate([[0], np.cumsum(lens)])]
        if slot_offsets is not None:
            arrays += [np.ascontiguousarray(slot_offsets[np.ix_(rows, self.layers)].T),
                       np.repeat(np.arange(len(rows)), lens)]
        return arrays

    def finish(self, plan: Any, device_arrays: Iterator[torch.Tensor], arena: "TableArena") -> None:
        """Builds this sub-batch's metadata and per-layer tables from its device arrays."""
        group, cm = plan.groups[self.names[0]]
        if self.whole:
            md, table, slots = (plan.attn_metadata[self.names[0]],
                                cm.block_table_tensor[: len(self.rows)],
                                cm.slot_mapping[: cm.num_actual_tokens])
            max_seq_len = cm.max_seq_len
        else:
            self.token_index, rows_dev, qsl_dev = (next(device_arrays) for _ in range(3))
            sub_cm = subset_metadata(cm, self.rows, rows_dev, self.token_index, qsl_dev)
            md = private_builder(group).build(common_prefix_len=0, common_attn_metadata=sub_cm)
            table, slots, max_seq_len = sub_cm.block_table_tensor, sub_cm.slot_mapping, \
                sub_cm.max_seq_len
        if plan.slot_offsets is None:  # no KV slots yet (profile run before the KV cache)
            self.per_layer = {idx: (md, None) for idx in self.layers}
            return
        offsets, token_rows = next(device_arrays), next(device_arrays)
        block_size = group.kv_cache_spec.block_size
        nb = min(table.shape[1], max(1, -(-max_seq_len // block_size)))
        tables = arena.take((len(self.layers), len(self.rows), nb), table.dtype, table.device)
        # Layer l's pages of a row live offsets[l, row] blocks further on (one broadcast op
        # for all of the sub-batch's layers; per-layer ops cost ~6% of a CPU decode step).
        torch.add(table[None, :, :nb], offsets.to(table.dtype)[:, :, None], out=tables)
        tok_off = (offsets[:, token_rows] * block_size).to(slots.dtype)
        shifted = torch.where(slots[None] >= 0, slots[None] + tok_off, slots[None])
        builder = private_builder(group)
        self.per_layer = {idx: (_with_tables(builder, md, tables[j], shifted[j]), shifted[j])
                          for j, idx in enumerate(self.layers)}

    @contextmanager
    def attention_for(self, layer_name: str, layer_idx: int):
        """Swaps this sub-batch's metadata and slot mapping in for one layer's call."""
        from vllm.forward_context import get_forward_context

        ctx = get_forward_context()
        old_md, old_slots = ctx.attn_metadata[layer_name], ctx.slot_mapping.get(layer_name)
        md, slots = self.per_layer[layer_idx]
        if slots is None and not self.whole and old_slots is not None:
            slots = old_slots[self.token_index]  # profile runs only: no KV slots yet
        ctx.attn_metadata[layer_name] = md
        if slots is not None:
            ctx.slot_mapping[layer_name] = slots
        try:
            yield
        finally:
            ctx.attn_metadata[layer_name] = old_md
            if slots is not None:
                ctx.slot_mapping[layer_name] = old_slots


class TableArena:
    """One persistent device buffer for the per-layer block tables of a step.

    A plan's tables live until its forward has run; the next plan writes the same memory
    (on a GPU, in stream order, after the kernels that read it). The buffer grows to the
    largest step seen; views taken before a growth keep the old buffer alive until they
    are dropped.
    """

    def __init__(self):
        self.buf: torch.Tensor | None = None
        self.used = 0

    def reset(self) -> None:
        self.used = 0

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
        n = int(np.prod(shape))
        buf = self.buf
        if buf is None or buf.dtype != dtype or buf.device != device or \
                self.used + n > buf.numel():
            self.buf = buf = torch.empty(2 * (self.used + n), dtype=dtype, device=device)
            self.used = 0
        out = buf[self.used: self.used + n].view(shape)
        self.used += n
        return out


def private_builder(group: Any):
    """The group's private metadata builder for sub-batches, created once, in the config
    context vLLM creates its own builders in (settings such as the forced FlashAttention
    version are read from the current config while a builder is made).

    Private: the runner's builder made the step's metadata, which stays in use. One per
    group serves every sub-batch of a step: for the supported backends in eager mode
    (FlashAttention without DCP, Triton, CPU), a build keeps no device state that a later
    build of the same step overwrites.
    """
    builder = getattr(group, "_pudding_builder", None)
    if builder is None:
        from vllm.config import set_current_vllm_config

        base = group.get_metadata_builder(0)
        with set_current_vllm_config(base.vllm_config):
            builder = type(base)(base.kv_cache_spec, base.layer_names, base.vllm_config,
                                 base.device)
        group._pudding_builder = builder
    return builder


def _with_tables(builder: Any, md: Any, block_table: torch.Tensor, slots: torch.Tensor):
    """Backend metadata with another block table and slot mapping (same rows, same lens)."""
    key = (type(builder), type(md))
    how = _RETARGET.get(key)
    if how is None:
        how = _RETARGET[key] = _retarget_kind(builder, md)
    if how == "builder":
        return builder.update_block_table(md, block_table, slots)
    return dataclasses.replace(md, block_table=block_table, slot_mapping=slots)


_RETARGET: dict[tuple[type, type], str] = {}
"""(builder type, metadata type) -> how to retarget; fields are looked up once."""


def _retarget_kind(builder: Any, md: Any) -> str:
    if getattr(builder, "supports_update_block_table", False):
        return "builder"
    fields = {f.name for f in dataclasses.fields(md)} if dataclasses.is_dataclass(md) else set()
    if {"block_table", "slot_mapping"} <= fields:  # e.g. the CPU and Triton backends
        return "replace"
    raise NotImplementedError(f"vllm-pudding KV slots: cannot retarget {type(md).__name__}")


def token_index(query_start_loc: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Flat token indices of `rows`, in row order (rows' tokens are contiguous)."""
    starts = query_start_loc[rows].astype(np.int64)
    lens = query_start_loc[rows + 1].astype(np.int64) - starts
    before = np.cumsum(lens) - lens
    return np.repeat(starts - before, lens) + np.arange(int(lens.sum()), dtype=np.int64)


def subset_metadata(cm: Any, rows: np.ndarray, rows_dev: torch.Tensor, tokens: torch.Tensor,
                    qsl_dev: torch.Tensor):
    """A CommonAttentionMetadata for a subset of rows, validated before any kernel sees it.

    Host fields come from host data, device fields from device indices: nothing moves
    between them. The CPU attention kernel does not validate metadata (an inconsistent
    one corrupted the heap here), so shapes are checked in Python first.
    """
    rows_cpu = torch.from_numpy(rows)
    qsl_cpu_all = cm.query_start_loc_cpu
    lens = qsl_cpu_all[rows_cpu + 1] - qsl_cpu_all[rows_cpu]
    new_qsl = torch.zeros(len(rows) + 1, dtype=qsl_cpu_all.dtype)
    torch.cumsum(lens, 0, out=new_qsl[1:])
    seq_ub = _take(cm.seq_lens_cpu_upper_bound, rows_cpu, rows_dev)
    sub = dataclasses.replace(
        cm,
        query_start_loc=qsl_dev.to(cm.query_start_loc.dtype),
        query_start_loc_cpu=new_qsl,
        seq_lens=cm.seq_lens[rows_dev],
        num_reqs=len(rows),
        num_actual_tokens=int(new_qsl[-1]),
        max_query_len=int(lens.max()),
        max_seq_len=int(seq_ub.max()) if seq_ub is not None else cm.max_seq_len,
        block_table_tensor=cm.block_table_tensor[rows_dev],
        slot_mapping=cm.slot_mapping[tokens],
        positions=None if cm.positions is None else cm.positions[tokens],
        is_prefilling=_take(cm.is_prefilling, rows_cpu, rows_dev),
        seq_lens_cpu_upper_bound=seq_ub,
        req_idx=None if cm.req_idx is None else cm.req_idx[rows],
        logits_indices_padded=None, num_logits_indices=None, max_logits_per_req=None,
        encoder_seq_lens=None, encoder_seq_lens_cpu=None,
        dcp_local_seq_lens=None, dcp_local_seq_lens_cpu_upper_bound=None,
        mm_req_doc_ranges=None, rswa_prefix_lens=None, replayssm_decode_base_cpu=None,
        _num_computed_tokens_cache=None, _token_to_req_indices_cache=None,
    )
    _validate(sub, tokens, lens, seq_ub)
    return sub


def _take(t: torch.Tensor | None, rows_cpu: torch.Tensor, rows_dev: torch.Tensor):
    """t[rows], indexed on the side t lives on (no copy between host and device)."""
    if t is None:
        return None
    return t[rows_cpu] if t.device.type == "cpu" else t[rows_dev]


def _validate(sub: Any, tokens: torch.Tensor, query_lens: torch.Tensor,
              seq_ub: torch.Tensor | None) -> None:
    n = sub.num_actual_tokens
    checks = {
        "token count": tokens.numel() == n == sub.slot_mapping.numel(),
        "rows": sub.block_table_tensor.shape[0] == sub.num_reqs == sub.seq_lens.numel(),
        "query lens <= seq lens": seq_ub is None or bool((query_lens <= seq_ub).all()),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise RuntimeError(f"vllm-pudding: inconsistent sub-batch metadata ({', '.join(bad)})")
