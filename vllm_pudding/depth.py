"""Per-request depth inside one continuous batch: row masks, gather/scatter, sub-batch metadata.

Why this shape: vLLM's V1 runner builds one attention metadata per step for all
rows (requests). A layer must run only on the rows whose omission set keeps it,
so for each distinct "rows that keep this layer" mask we build a sub-batch:
the token indices of those rows, and attention metadata for exactly those rows
(built by vLLM's own metadata builder from a row subset of the step's
`CommonAttentionMetadata`). Layers sharing a mask share the sub-batch, so a
step builds at most as many sub-batches as it has distinct masks.

Data flow, one step:
  runner._build_attention_metadata  --patch-->  begin_step / record_group / end_step
      -> StepPlan (row -> set id from each request's extra_args["pudding_set"])
  PuddingLlamaModel.forward -> LayerRunner.run(layer) -> plan.for_layer(idx)
      -> ALL (dense call) | NONE (skip) | SubBatch (gather, swap metadata, run, scatter)

Only this module and `vllm_pudding.patches` touch vLLM's attention metadata.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from vllm_pudding.config import ROUTE_ARG, SET_ARG, PuddingConfig

ALL = "all"
NONE = "none"
DENSE_ROW = -1
"""Row set id for rows without a live request (dummy/profile runs): run every built layer."""
DECIDED_ATTR = "pudding_routed_set"
"""Attribute the worker sets on a request's CachedRequestState once the router decided."""


class _State:
    """Per-process state: one model runner per worker process."""

    pool: PuddingConfig | None = None
    kept: np.ndarray | None = None  # [num_sets + 1, num_layers] bool, last row = dense
    slot_of: np.ndarray | None = None  # [num_sets + 1, num_layers] KV slot of a kept layer
    kv_blocks: int = 0  # blocks the KV manager hands out (each holds num_slots layer slots)
    recording: dict | None = None  # attn group -> CommonAttentionMetadata, during a build
    plan: "StepPlan | None" = None
    dummy: int = 0
    stats: dict = {}
    router: Any = None  # router.in_engine.EngineRouter: decides unrouted rows mid-forward
    routes: dict = {}  # req id -> (set, routing-step seconds) not yet handed to the scheduler


_state = _State()


def configure(pool: PuddingConfig, num_layers: int, router: Any = None) -> None:
    """Called when the model is built in a worker: kept-layer and KV-slot matrices."""
    never_kept = pool.omitted_by_all()
    built = [l not in never_kept for l in range(num_layers)]
    kept = np.array(pool.kept_mask(num_layers) + [built], dtype=bool)
    num_slots = num_layers - pool.k
    # Slot of a kept layer = its rank among the layers its set keeps. Dense rows
    # (dummy runs, no live request) clip into the last slot: they own no blocks.
    slot_of = np.minimum(np.cumsum(kept, axis=1) - 1, num_slots - 1)
    _state.pool, _state.kept, _state.slot_of = pool, kept, slot_of
    _state.router, _state.routes = router, {}


def route_after() -> int | None:
    """Index of the layer after which unrouted rows are routed; None without a router."""
    return None if _state.router is None else _state.router.route_after


def take_routes() -> dict[str, tuple[int, float]]:
    """Sets decided since the last call (req id -> (set id, seconds the routing step
    took)), for the step's output."""
    routes, _state.routes = _state.routes, {}
    return routes


def restore_routes(routes: dict[str, tuple[int, float]]) -> None:
    """Puts decisions back when a step produced no output to carry them."""
    _state.routes = {**routes, **_state.routes}


def is_active() -> bool:
    return _state.pool is not None


def num_slots() -> int:
    """KV layer slots per block: the layers one request keeps (L - k)."""
    return _state.kept.shape[1] - _state.pool.k


def set_kv_blocks(num_blocks: int) -> None:
    _state.kv_blocks = num_blocks


def all_slot_blocks(block_ids: list[int]) -> list[int]:
    """Every slot's copy of these blocks, in the workers' (L - k) x blocks view."""
    nb = _state.kv_blocks
    return [b + j * nb for j in range(num_slots()) for b in block_ids]


# ---- runner side: record the step's metadata and the row -> set mapping ----

def begin_step() -> None:
    _state.recording = {}
    _state.plan = None


def record_group(attn_group: Any, common_attn_metadata: Any, ubatch_idx: int) -> None:
    """Sees each attention group's step metadata as the runner builds it."""
    if _state.recording is None:
        return
    if ubatch_idx:
        raise NotImplementedError("vllm-pudding does not support micro-batching (ubatch)")
    _state.recording[id(attn_group)] = (attn_group, common_attn_metadata)


def end_step(runner: Any, attn_metadata: Any, num_reqs: int) -> None:
    """Publishes the plan the model's next forward reads."""
    recorded, _state.recording = _state.recording, None
    if not isinstance(attn_metadata, dict) or not attn_metadata:
        return  # attention-free step: the model runs dense
    pending = []
    if _state.dummy:
        row_sets = np.full(num_reqs, DENSE_ROW, dtype=np.int64)
    else:
        row_sets, pending = _row_sets(runner, num_reqs)
    groups = _groups_by_layer(runner, recorded)
    _state.plan = StepPlan(attn_metadata, row_sets, groups, _state.kept,
                           _slot_offsets(row_sets), pending)
    if not _state.dummy:
        _count_step(_state.plan)


def _count_step(plan: "StepPlan") -> None:
    """Cheap per-step counters, read by tests (via LLM.apply_model) and benchmarks."""
    query_lens = np.diff(plan.query_start_loc[: len(plan.row_sets) + 1])
    stats = _state.stats
    stats["steps"] = stats.get("steps", 0) + 1
    mixed_sets = len(set(plan.row_sets.tolist())) > 1
    prefill_and_decode = bool((query_lens > 1).any() and (query_lens == 1).any())
    stats["mixed_set_steps"] = stats.get("mixed_set_steps", 0) + mixed_sets
    stats["prefill_decode_steps"] = stats.get("prefill_decode_steps", 0) + prefill_and_decode
    stats["mixed_set_prefill_decode_steps"] = (
        stats.get("mixed_set_prefill_decode_steps", 0) + (mixed_sets and prefill_and_decode))


def step_stats(_model: Any = None) -> dict:
    """Counters since the model was built in this worker (`LLM.apply_model(step_stats)`)."""
    return dict(_state.stats)


@contextmanager
def dummy_run():
    """Rows of a dummy/profile run belong to no request: they run every layer."""
    _state.dummy += 1
    try:
        yield
    finally:
        _state.dummy -= 1


def _slot_offsets(row_sets: np.ndarray) -> np.ndarray | None:
    """[rows, layers] block-id offset of each row's KV slot per layer; None without slots."""
    if not _state.kv_blocks:
        return None
    return _state.slot_of[row_sets] * _state.kv_blocks


def _row_sets(runner: Any, num_reqs: int) -> tuple[np.ndarray, list]:
    """Each row's set id, and the (row, request) pairs the in-engine router must decide.

    A row waiting for the router runs the default set until the routing layer: every
    set keeps those layers, in the same KV slots, so the placeholder changes nothing.
    """
    pool = _state.pool
    req_ids = runner.input_batch.req_ids
    out = np.full(num_reqs, DENSE_ROW, dtype=np.int64)
    pending = []
    for row in range(min(num_reqs, len(req_ids))):
        req = runner.requests.get(req_ids[row])
        if req is None or req.sampling_params is None:
            continue
        extra = req.sampling_params.extra_args or {}
        value = extra.get(SET_ARG)
        if value is None and extra.get(ROUTE_ARG):
            value = getattr(req, DECIDED_ATTR, None)
            if value is None:
                if _state.router is None:
                    raise RuntimeError("vllm-pudding: a request awaits the in-engine router, "
                                       "but this model has none")
                pending.append((row, req))
        out[row] = pool.resolve_set_id(value)
    return out, pending


def _groups_by_layer(runner: Any, recorded: dict) -> dict[str, tuple[Any, Any]]:
    """layer name -> (attention group, its step CommonAttentionMetadata)."""
    by_layer = {}
    for groups in runner.attn_groups:
        for group in groups:
            if id(group) not in recorded:
                raise RuntimeError(
                    "vllm-pudding: an attention group was built without build_metadata; "
                    "this vLLM build takes a path the depth plan does not support"
                )
            if group.kernel_block_size is not None:
                raise NotImplementedError("vllm-pudding: kernel block sizes are not supported")
            for name in group.layer_names:
                by_layer[name] = recorded[id(group)]
    return by_layer


# ---- model side ----

@dataclasses.dataclass
class SubBatch:
    """Rows that run a layer: their tokens (None = every token) and attention metadata."""

    token_index: torch.Tensor | None
    rows: np.ndarray
    plan: "StepPlan"
    _metadata: dict = dataclasses.field(default_factory=dict)
    _tables: dict = dataclasses.field(default_factory=dict)

    @contextmanager
    def attention_for(self, layer_name: str, layer_idx: int):
        """Swaps this sub-batch's metadata and slot mapping in for one layer's call."""
        from vllm.forward_context import get_forward_context

        ctx = get_forward_context()
        old_md, old_slots = ctx.attn_metadata[layer_name], ctx.slot_mapping.get(layer_name)
        md, slots = self._layer_metadata(layer_name, layer_idx, old_md, old_slots)
        ctx.attn_metadata[layer_name] = md
        if slots is not None:
            ctx.slot_mapping[layer_name] = slots
        try:
            yield
        finally:
            ctx.attn_metadata[layer_name] = old_md
            if slots is not None:
                ctx.slot_mapping[layer_name] = old_slots

    def _layer_metadata(self, layer_name, layer_idx, step_md, step_slots):
        group, cm = self.plan.groups[layer_name]
        md, block_table, slots = self._base(group, cm, step_md, step_slots)
        if self.plan.slot_offsets is None:
            return md, slots
        tables, all_slots = self._slot_tables(group, cm, block_table, slots)
        new_slots = all_slots[layer_idx]
        return _with_tables(self.plan.builder_for(group), md, tables[layer_idx],
                            new_slots), new_slots

    def _slot_tables(self, group, cm, block_table, slots):
        """Every layer's block table and slot mapping for these rows, built once per step.

        KV slots: layer l's pages of a row live `offset[row, l]` blocks further on. One
        broadcast op for all layers costs less than a handful of small ops per layer
        (the per-layer version cost ~6% of a decode step here).
        """
        key = ("slots", id(group))
        if key not in self._tables:
            offsets = np.ascontiguousarray(self.plan.slot_offsets[self.rows].T)  # [L, rows]
            off = torch.from_numpy(offsets).to(block_table.device)
            tables = block_table[None] + off.to(block_table.dtype)[:, :, None]
            tok_off = off[:, self._token_rows(cm, off.device)] * group.kv_cache_spec.block_size
            shifted = torch.where(slots[None] >= 0, slots[None] + tok_off.to(slots.dtype),
                                  slots[None])
            self._tables[key] = (tables, shifted)
        return self._tables[key]

    def _base(self, group, cm, step_md, step_slots):
        """Metadata, block table and slot mapping of these rows (before slot offsets)."""
        key = id(group)
        if key not in self._metadata:
            if self.token_index is None:
                self._metadata[key] = (step_md, cm.block_table_tensor[: len(self.rows)],
                                       cm.slot_mapping[: cm.num_actual_tokens])
            else:
                sub_cm = subset_metadata(cm, self.rows, self.token_index)
                md = self.plan.builder_for(group).build(common_prefix_len=0,
                                                        common_attn_metadata=sub_cm)
                self._metadata[key] = (md, sub_cm.block_table_tensor, sub_cm.slot_mapping)
        md, table, slots = self._metadata[key]
        if step_slots is not None and self.plan.slot_offsets is None:
            slots = step_slots if self.token_index is None else step_slots[self.token_index]
        return md, table, slots

    def _token_rows(self, cm, device) -> torch.Tensor:
        """Position (within self.rows) of each of this sub-batch's tokens; once per step."""
        if "token_rows" not in self._tables:
            qsl = cm.query_start_loc_cpu
            rows = torch.from_numpy(self.rows)
            lens = qsl[rows + 1] - qsl[rows]
            order = torch.arange(len(self.rows))
            self._tables["token_rows"] = torch.repeat_interleave(order, lens).to(device)
        return self._tables["token_rows"]


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
    if {"block_table", "slot_mapping"} <= fields:  # e.g. the CPU backend's metadata
        return "replace"
    raise NotImplementedError(f"vllm-pudding KV slots: cannot retarget {type(md).__name__}")


class StepPlan:
    """Which rows run which layer in this step; sub-batches cached by row mask."""

    _builders: dict = {}

    def __init__(self, attn_metadata: dict, row_sets: np.ndarray,
                 groups: dict[str, tuple[Any, Any]], kept: np.ndarray,
                 slot_offsets: np.ndarray | None = None, pending: list | None = None):
        self.attn_metadata = attn_metadata
        self.row_sets = row_sets
        self.groups = groups
        self.row_kept = kept[row_sets]  # [num_reqs, num_layers]
        self.slot_offsets = slot_offsets  # [num_reqs, num_layers] or None
        self.pending = pending or []  # (row, CachedRequestState) for the in-engine router
        any_group = next(iter(groups.values()))[1]
        self.query_start_loc = any_group.query_start_loc_cpu.numpy()
        self.device = any_group.query_start_loc.device
        self._by_mask: dict[bytes, Any] = {}

    def route(self, states: torch.Tensor) -> None:
        """Decides the pending rows from `states` (the residual stream) and re-plans.

        Called once, right after the last layer every set keeps; later layers of this
        step, and every later step of these requests, follow the decided sets.
        """
        start = time.perf_counter()
        rows = np.array([row for row, _ in self.pending], dtype=np.int64)
        sets = _state.router.decide(states, self.query_start_loc, rows)
        _state.stats["routed_rows"] = _state.stats.get("routed_rows", 0) + len(rows)
        self.row_sets = self.row_sets.copy()
        self.row_sets[rows] = sets
        self.row_kept = _state.kept[self.row_sets]
        self.slot_offsets = _slot_offsets(self.row_sets)
        self._by_mask = {}  # sub-batches of the shared prefix layers are done with
        seconds = time.perf_counter() - start
        for (_, req), set_id in zip(self.pending, sets):
            setattr(req, DECIDED_ATTR, set_id)
            _state.routes[req.req_id] = (int(set_id), seconds)  # the routing-time metric
        self.pending = []
        stats = _state.stats
        stats["route_calls"] = stats.get("route_calls", 0) + 1
        stats["route_seconds"] = stats.get("route_seconds", 0.0) + seconds

    def for_layer(self, idx: int):
        """ALL (stock call), NONE (skip) or the SubBatch of rows that keep layer idx."""
        mask = self.row_kept[:, idx]
        key = mask.tobytes()
        if key not in self._by_mask:
            self._by_mask[key] = self._make(mask)
        found = self._by_mask[key]
        if found is ALL and self.slot_offsets is not None:
            return self._all_rows()  # every layer needs its own KV slot tables
        return found

    def _make(self, mask: np.ndarray):
        if mask.all():
            return ALL
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            return NONE
        index = token_index(self.query_start_loc, rows)
        return SubBatch(torch.from_numpy(index).to(self.device), rows, self)

    def _all_rows(self) -> SubBatch:
        if "all" not in self._by_mask:
            self._by_mask["all"] = SubBatch(None, np.arange(len(self.row_sets)), self)
        return self._by_mask["all"]

    @classmethod
    def builder_for(cls, group: Any):
        """A private metadata builder per group: builders keep per-build state."""
        builder = cls._builders.get(id(group))
        if builder is None:
            base = group.get_metadata_builder(0)
            builder = type(base)(base.kv_cache_spec, base.layer_names,
                                 base.vllm_config, base.device)
            cls._builders[id(group)] = builder
        return builder


def current_plan(attn_metadata: Any) -> StepPlan | None:
    """The plan for the running forward, or None when every row runs every layer."""
    plan = _state.plan
    if not attn_metadata or not isinstance(attn_metadata, dict):
        return None  # profile / warm-up forward without attention metadata
    if plan is None or plan.attn_metadata is not attn_metadata:
        raise RuntimeError("vllm-pudding: no depth plan for this step (runner patch not applied?)")
    return plan


def token_index(query_start_loc: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Flat token indices of `rows`, in row order (rows' tokens are contiguous)."""
    starts = query_start_loc[rows].astype(np.int64)
    lens = query_start_loc[rows + 1].astype(np.int64) - starts
    before = np.cumsum(lens) - lens
    return np.repeat(starts - before, lens) + np.arange(int(lens.sum()), dtype=np.int64)


def subset_metadata(cm: Any, rows: np.ndarray, tokens: torch.Tensor):
    """A CommonAttentionMetadata for a subset of rows, validated before any kernel sees it.

    The CPU attention kernel does not validate metadata (an inconsistent one
    corrupted the heap here), so shapes are checked in Python first.
    """
    device = cm.query_start_loc.device
    qsl_cpu = cm.query_start_loc_cpu
    rows_cpu = torch.from_numpy(rows)
    lens = qsl_cpu[rows_cpu + 1] - qsl_cpu[rows_cpu]
    new_qsl = torch.zeros(len(rows) + 1, dtype=qsl_cpu.dtype)
    torch.cumsum(lens, 0, out=new_qsl[1:])
    rows_dev = rows_cpu.to(device)
    seq_ub = _take(cm.seq_lens_cpu_upper_bound, rows_cpu)
    sub = dataclasses.replace(
        cm,
        query_start_loc=new_qsl.to(device),
        query_start_loc_cpu=new_qsl,
        seq_lens=cm.seq_lens[rows_dev],
        num_reqs=len(rows),
        num_actual_tokens=int(new_qsl[-1]),
        max_query_len=int(lens.max()),
        max_seq_len=int(seq_ub.max()) if seq_ub is not None else cm.max_seq_len,
        block_table_tensor=cm.block_table_tensor[rows_dev],
        slot_mapping=cm.slot_mapping[tokens],
        positions=None if cm.positions is None else cm.positions[tokens],
        is_prefilling=_take(cm.is_prefilling, rows_dev),
        seq_lens_cpu_upper_bound=seq_ub,
        req_idx=None if cm.req_idx is None else cm.req_idx[rows],
        logits_indices_padded=None, num_logits_indices=None, max_logits_per_req=None,
        encoder_seq_lens=None, encoder_seq_lens_cpu=None,
        dcp_local_seq_lens=None, dcp_local_seq_lens_cpu_upper_bound=None,
        mm_req_doc_ranges=None, rswa_prefix_lens=None, replayssm_decode_base_cpu=None,
        _num_computed_tokens_cache=None, _token_to_req_indices_cache=None,
    )
    _validate(sub, tokens)
    return sub


def _take(t: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t[idx.to(t.device)]


def _validate(sub: Any, tokens: torch.Tensor) -> None:
    n = sub.num_actual_tokens
    checks = {
        "token count": tokens.numel() == n == sub.slot_mapping.numel(),
        "rows": sub.block_table_tensor.shape[0] == sub.num_reqs == sub.seq_lens.numel(),
        "query lens <= seq lens": bool(
            ((sub.query_start_loc_cpu[1:] - sub.query_start_loc_cpu[:-1])
             <= sub.seq_lens.cpu()).all()),
    }
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        raise RuntimeError(f"vllm-pudding: inconsistent sub-batch metadata ({', '.join(bad)})")


class LayerRunner:
    """Runs the layer loop of one forward, each layer on the rows that keep it."""

    def __init__(self, positions: torch.Tensor, hidden: torch.Tensor, layer_kwargs: dict):
        from vllm.forward_context import get_forward_context

        self.plan = current_plan(get_forward_context().attn_metadata)
        # A copy made here (inference mode) has the same dispatch keys as the per-row
        # `positions[tok]`; the runner's own buffer view does not, and compiled layers
        # (layer_compile) would recompile for the difference.
        self.positions, self.hidden, self.residual = positions.clone(), hidden, None
        self.kwargs = layer_kwargs
        self._owned = False  # hidden may be a runner buffer until a layer returns a new one

    def route(self) -> None:
        """Hands the residual stream to the in-engine router if this step has unrouted rows."""
        if self.plan is not None and self.plan.pending:
            self.plan.route(self.hidden + self.residual)

    def run(self, idx: int, layer: torch.nn.Module) -> None:
        sub = ALL if self.plan is None else self.plan.for_layer(idx)
        if sub is NONE:
            return
        if sub is ALL:
            self._run_all(layer)
        elif sub.token_index is None:
            with sub.attention_for(layer.self_attn.attn.layer_name, idx):
                self._run_all(layer)
        else:
            self._run_rows(sub, idx, layer)

    def _run_all(self, layer: torch.nn.Module) -> None:
        self.hidden, self.residual = layer(self.positions, self.hidden, self.residual,
                                           **self.kwargs)
        self._owned = True

    def _run_rows(self, sub: SubBatch, idx: int, layer: torch.nn.Module) -> None:
        if self.residual is None:
            # The fused add-norm sees residual + 0 == the unfused first-layer input.
            self.residual = torch.zeros_like(self.hidden)
        if not self._owned:
            self.hidden, self._owned = self.hidden.clone(), True
        tok = sub.token_index
        with sub.attention_for(layer.self_attn.attn.layer_name, idx):
            h, r = layer(self.positions[tok], self.hidden[tok], self.residual[tok],
                         **self.kwargs)
        self.hidden.index_copy_(0, tok, h)
        self.residual.index_copy_(0, tok, r)
