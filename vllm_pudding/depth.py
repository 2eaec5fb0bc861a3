"""Per-request depth inside one continuous batch: the step plan and the layer loop.

Why this shape: vLLM's V1 runner builds one attention metadata per step for all
rows (requests). A layer must run only on the rows whose omission set keeps it, so
the rows that keep a layer form a sub-batch (`sub_batch.py`: its tokens and
attention metadata for exactly those rows, built by vLLM's own builder). Layers
sharing a row mask share the sub-batch, so a step builds at most as many
sub-batches as it has distinct masks, all before its forward, from one
host-to-device copy (`transfer.py`).

Data flow, one step:
  runner._build_attention_metadata  --patch-->  begin_step / record_group / end_step
      -> StepPlan (row -> set id from each request's extra_args["pudding_set"];
                   every SubBatch built)
  models.common.run_layers -> LayerRunner.run(layer) -> plan.for_layer(idx)
      -> ALL (dense call) | NONE (skip) | SubBatch (gather, swap metadata, run, scatter)

Only this module, `sub_batch.py` and `vllm_pudding.patches` touch vLLM's attention
metadata.
"""

from __future__ import annotations

import re
import time
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from vllm_pudding import transfer
from vllm_pudding.config import ROUTE_ARG, SET_ARG, PuddingConfig
from vllm_pudding.sub_batch import SubBatch, TableArena

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
    num_slots: int = 0  # layer slots per block (set_kv_layout)
    kv_groups: list = []  # each KV cache group's decoder layers (set_kv_layout)
    recording: dict | None = None  # attn group -> CommonAttentionMetadata, during a build
    plan: "StepPlan | None" = None
    dummy: int = 0
    stats: dict = {}
    router: Any = None  # router.in_engine.EngineRouter: decides unrouted rows mid-forward
    routes: dict = {}  # req id -> (set, routing-step seconds) not yet handed to the scheduler
    arena: TableArena = TableArena()  # the per-layer block tables of the current step


_state = _State()


def configure(pool: PuddingConfig, num_layers: int, router: Any = None) -> None:
    """Called when the model is built in a worker: the kept-layer matrix."""
    never_kept = pool.omitted_by_all()
    built = [l not in never_kept for l in range(num_layers)]
    kept = np.array(pool.kept_mask(num_layers) + [built], dtype=bool)
    _state.pool, _state.kept = pool, kept
    _state.router, _state.routes = router, {}
    _state.kv_blocks, _state.num_slots, _state.slot_of = 0, 0, None


def slots_needed(pool: PuddingConfig, groups: list[list[int]]) -> int:
    """Layer slots per KV block: the most layers any set keeps in any KV cache group
    (L - k with one group of every built layer)."""
    return max(sum(1 for l in g if l not in set(s)) for s in pool.omission_sets for g in groups)


def set_kv_layout(num_blocks: int, groups: list[list[int]]) -> None:
    """Called when the worker allocates the KV cache: blocks and each group's layers.

    Slot of a kept layer = its rank among the layers its set keeps in that layer's KV
    cache group. Dense rows (dummy runs, no live request) clip into the last slot: they
    own no blocks."""
    kept = _state.kept
    slot_of = np.zeros_like(kept, dtype=np.int64)
    for g in groups:
        g = sorted(g)
        slot_of[:, g] = np.cumsum(kept[:, g], axis=1) - 1
    _state.num_slots = slots_needed(_state.pool, groups)
    _state.slot_of = np.clip(slot_of, 0, _state.num_slots - 1)
    _state.kv_blocks = num_blocks
    _state.kv_groups = [sorted(g) for g in groups]


def kv_layout(_model: Any = None) -> dict:
    """This worker's KV slot layout (`LLM.apply_model(kv_layout)`): slots per block and
    each KV cache group's decoder layers."""
    return {"slots": _state.num_slots, "groups": _state.kv_groups}


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
    """KV layer slots per block (L - k with one KV cache group)."""
    return _state.num_slots


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
    """Counters since the model was built in this worker (`LLM.apply_model(step_stats)`),
    with the plan's host-to-device copies (`copies_plan`, `copies_route`,
    `copies_in_layer_loop`)."""
    return {**_state.stats, **{f"copies_{k}": v for k, v in transfer.COPIES.items()}}


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
            for name in group.layer_names:
                by_layer[name] = recorded[id(group)]
    return by_layer


# ---- model side ----

class StepPlan:
    """Which rows run which layer in this step, every sub-batch prepared up front.

    One SubBatch per (row mask, attention group); all of them are built when the plan is
    made (the runner's metadata build, before the forward), from one host-to-device copy.
    A step with rows the in-engine router must decide is planned up to the routing layer;
    `route` plans the rest once the sets are known.
    """

    def __init__(self, attn_metadata: dict, row_sets: np.ndarray,
                 groups: dict[str, tuple[Any, Any]], kept: np.ndarray,
                 slot_offsets: np.ndarray | None = None, pending: list | None = None):
        self.attn_metadata = attn_metadata
        self.groups = groups
        self.kept = kept
        self.pending = pending or []  # (row, CachedRequestState) for the in-engine router
        any_group = next(iter(groups.values()))[1]
        self.query_start_loc = any_group.query_start_loc_cpu.numpy()
        self.device = any_group.query_start_loc.device
        self.layer_names = {layer_index(name): name for name in groups}
        last = route_after() if self.pending else None
        self._layers: dict[int, Any] = {}
        self._plan(row_sets, slot_offsets, range(0, (last + 1) if last is not None else
                                                len(kept[0])), "plan")

    def _plan(self, row_sets: np.ndarray, slot_offsets: np.ndarray | None, layers: range,
              purpose: str) -> None:
        self.row_sets = row_sets
        self.row_kept = self.kept[row_sets]  # [num_reqs, num_layers]
        self.slot_offsets = slot_offsets  # [num_reqs, num_layers] or None
        subs = self._sub_batches([l for l in layers if l in self.layer_names])
        arrays = [a for sub in subs for a in sub.host_arrays(self.query_start_loc, slot_offsets)]
        device_arrays = iter(transfer.to_device(arrays, self.device, purpose))
        _state.arena.reset()
        for sub in subs:
            sub.finish(self, device_arrays, _state.arena)

    def _sub_batches(self, layers: list[int]) -> list[SubBatch]:
        """Assigns ALL, NONE or a SubBatch to each layer; returns the sub-batches to build."""
        by_key: dict[tuple, list[int]] = {}
        for idx in layers:
            mask = self.row_kept[:, idx]
            group = self.groups[self.layer_names[idx]][0]
            by_key.setdefault((mask.tobytes(), id(group)), []).append(idx)
        subs = []
        for idxs in by_key.values():
            mask = self.row_kept[:, idxs[0]]
            if not mask.any() or (mask.all() and self.slot_offsets is None):
                entry = NONE if not mask.any() else ALL
            else:
                entry = SubBatch(np.flatnonzero(mask), idxs,
                                 [self.layer_names[i] for i in idxs], whole=bool(mask.all()))
                subs.append(entry)
            self._layers.update({i: entry for i in idxs})
        return subs

    def route(self, states: torch.Tensor) -> None:
        """Decides the pending rows from `states` (the residual stream) and plans the rest.

        Called once, right after the last layer every set keeps; later layers of this
        step, and every later step of these requests, follow the decided sets.
        """
        start = time.perf_counter()
        rows = np.array([row for row, _ in self.pending], dtype=np.int64)
        sets = share_decision(_state.router.decide(states, self.query_start_loc, rows))
        row_sets = self.row_sets.copy()
        row_sets[rows] = sets
        pending, self.pending = self.pending, []
        self._plan(row_sets, _slot_offsets(row_sets),
                   range(_state.router.route_after + 1, len(self.kept[0])), "route")
        seconds = time.perf_counter() - start  # pooling, head, decision sharing, re-plan
        for (_, req), set_id in zip(pending, sets):
            setattr(req, DECIDED_ATTR, set_id)
            _state.routes[req.req_id] = (int(set_id), seconds)  # the routing-time metric
        _state.stats["routed_rows"] = _state.stats.get("routed_rows", 0) + len(rows)
        stats = _state.stats
        stats["route_calls"] = stats.get("route_calls", 0) + 1
        stats["route_seconds"] = stats.get("route_seconds", 0.0) + seconds

    def for_layer(self, idx: int):
        """ALL (stock call), NONE (skip) or the SubBatch of rows that run layer idx."""
        return self._layers[idx]


def share_decision(sets: torch.Tensor) -> list[int]:
    """The router's sets as decided on the first tensor-parallel rank, on every rank.

    Every rank runs the head on its own copy of the residual stream; if argmax ever
    differed between ranks (another GPU model, another kernel), their row masks, and so
    their sub-batch sizes and collectives, would stop matching: a hang. The first rank's
    decision wins; this is the step's one collective of the router, on a few ints.
    """
    from vllm.distributed import parallel_state

    if parallel_state.model_parallel_is_initialized():
        tp = parallel_state.get_tp_group()
        if tp.world_size > 1:
            sets = tp.broadcast(sets.contiguous(), src=0)
    return sets.tolist()


def current_plan(attn_metadata: Any) -> StepPlan | None:
    """The plan for the running forward, or None when every row runs every layer."""
    plan = _state.plan
    if not attn_metadata or not isinstance(attn_metadata, dict):
        return None  # profile / warm-up forward without attention metadata
    if plan is None or plan.attn_metadata is not attn_metadata:
        raise RuntimeError("vllm-pudding: no depth plan for this step (runner patch not applied?)")
    return plan


_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


def layer_index(name: str) -> int | None:
    """Decoder layer index in a module or weight name (`model.layers.12.self_attn...`)."""
    match = _LAYER_INDEX.search(name)
    return int(match.group(1)) if match else None


class LayerRunner:
    """Runs the layer loop of one forward, each layer on the rows that keep it.

    Consecutive layers run by the same sub-batch share one gather and one scatter: its
    rows' states stay gathered until a layer needs other rows (or the router, or the final
    norm, needs them all). Layers no row keeps in between do not break the run.
    """

    def __init__(self, positions: torch.Tensor, hidden: torch.Tensor, layer_kwargs: dict):
        from vllm.forward_context import get_forward_context

        self.plan = current_plan(get_forward_context().attn_metadata)
        # A copy made here (inference mode) has the same dispatch keys as the per-row
        # `positions[tok]`; the runner's own buffer view does not, and compiled layers
        # (layer_compile) would recompile for the difference.
        self.positions, self.hidden, self.residual = positions.clone(), hidden, None
        self.kwargs = layer_kwargs
        self._owned = False  # hidden may be a runner buffer until a layer returns a new one
        self._held = None  # (sub-batch, positions, hidden, residual) of its gathered rows

    def route(self) -> None:
        """Hands the residual stream to the in-engine router if this step has unrouted rows."""
        if self.plan is not None and self.plan.pending:
            self._scatter()
            self.plan.route(self.hidden + self.residual)

    def states(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every row's (hidden, residual) after the last layer."""
        self._scatter()
        return self.hidden, self.residual

    def run(self, idx: int, layer: torch.nn.Module) -> None:
        with transfer.layer_loop():
            self._run(idx, layer)

    def _run(self, idx: int, layer: torch.nn.Module) -> None:
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
        self._scatter()
        self.hidden, self.residual = layer(self.positions, self.hidden, self.residual,
                                           **self.kwargs)
        self._owned = True

    def _run_rows(self, sub: SubBatch, idx: int, layer: torch.nn.Module) -> None:
        if self._held is None or self._held[0] is not sub:
            self._gather(sub)
        _, pos, h, r = self._held
        with sub.attention_for(layer.self_attn.attn.layer_name, idx):
            h, r = layer(pos, h, r, **self.kwargs)
        self._held = (sub, pos, h, r)

    def _gather(self, sub: SubBatch) -> None:
        self._scatter()
        if self.residual is None:
            # The fused add-norm sees residual + 0 == the unfused first-layer input.
            self.residual = torch.zeros_like(self.hidden)
        tok = sub.token_index
        self._held = (sub, self.positions[tok], self.hidden[tok], self.residual[tok])

    def _scatter(self) -> None:
        if self._held is None:
            return
        sub, _, h, r = self._held
        if not self._owned:
            self.hidden, self._owned = self.hidden.clone(), True
        self.hidden.index_copy_(0, sub.token_index, h)
        self.residual.index_copy_(0, sub.token_index, r)
        self._held = None
