"""Which replica serves a request: set-affine groups, least-loaded within a group.

Why: a decode step costs about the union of the layers its rows keep (one engine measured
0.821 of one-set speed with all 10 default sets mixed, 0.922 with 2). Replicas that each
serve a group of sets keep that union small, so spreading the sets over replicas turns
replicas into a speed-up instead of copies.

The cost model sizing the groups: a replica serving group G spends, per step,
`|union of kept layers of G| + overhead_layers`; the group's work is its traffic share times
that step cost, and its replicas share the work. `group_plan` minimises the busiest
replica's work (the throughput bottleneck) over partitions built by greedy agglomerative
merging (merge the two groups whose traffic-weighted union grows least) then improved by
moving or swapping single sets, with replicas
given to groups by largest remaining work per replica (optimal for a fixed partition).

Pure Python, no vLLM import: the vLLM data-parallel front end
(`vllm_pudding.patches.dp_dispatch`) and the Ray Serve ingress share it.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator


@dataclass(frozen=True)
class GroupPlan:
    """A partition of the sets into groups and the replicas each group gets."""

    groups: tuple[frozenset[int], ...]
    """Set ids per group."""
    replicas: tuple[int, ...]
    """Replica count per group (each >= 1; they sum to the replica count)."""
    work: tuple[float, ...]
    """Per group: traffic share x step cost (kept-layer union + overhead)."""

    @property
    def bottleneck(self) -> float:
        """The busiest replica's work; predicted throughput is proportional to 1/this."""
        return max(w / r for w, r in zip(self.work, self.replicas))

    def replica_sets(self) -> list[frozenset[int]]:
        """For each replica (group by group), the sets it serves."""
        return [g for g, r in zip(self.groups, self.replicas) for _ in range(r)]


def _check_inputs(kept_layers: Sequence[frozenset[int]], set_freqs: Sequence[float],
                  num_replicas: int) -> list[float]:
    """Validated frequencies normalised to sum 1 (uniform when all are zero)."""
    if not kept_layers:
        raise ValueError("kept_layers is empty: the pool needs at least one set")
    if len(set_freqs) != len(kept_layers):
        raise ValueError(f"set_freqs has {len(set_freqs)} entries but the pool has "
                         f"{len(kept_layers)} sets")
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"num_replicas must be an int >= 1, got {num_replicas!r}")
    freqs = [float(f) for f in set_freqs]
    if any(not math.isfinite(f) or f < 0 for f in freqs):
        raise ValueError(f"set_freqs must be finite and >= 0, got {list(set_freqs)}")
    total = sum(freqs)
    return [f / total for f in freqs] if total > 0 else [1 / len(freqs)] * len(freqs)


class _Cost:
    """Work of a group (traffic share x step cost), with kept layers as bit masks."""

    def __init__(self, kept_layers: Sequence[frozenset[int]], freqs: list[float],
                 overhead: float, partial_cost: float = 0.0):
        self.masks = [sum(1 << layer for layer in k) for k in kept_layers]
        self.freqs, self.overhead, self.partial_cost = freqs, overhead, partial_cost

    def work(self, group) -> float:
        union, common = 0, -1
        for s in group:
            union |= self.masks[s]
            common &= self.masks[s]
        partial = union.bit_count() - common.bit_count()
        return sum(self.freqs[s] for s in group) * (
            union.bit_count() + self.overhead + self.partial_cost * partial)

    def key(self, groups: list[frozenset[int]], num_replicas: int) -> tuple[float, float]:
        """(bottleneck, total work) of a partition with replicas allocated optimally."""
        work = [self.work(g) for g in groups]
        counts = _allocate(work, num_replicas)
        return (round(max(w / r for w, r in zip(work, counts)), 12), round(sum(work), 12))


def _partitions(cost: _Cost):
    """Partitions from one group per set down to one group, merging greedily the pair
    whose traffic-weighted step cost grows least (ties: lowest set ids)."""
    groups = [frozenset([s]) for s in range(len(cost.masks))]
    yield list(groups)
    while len(groups) > 1:
        _, i, j = min((cost.work(a | b) - cost.work(a) - cost.work(b), i, j)
                      for i, a in enumerate(groups) for j, b in enumerate(groups) if i < j)
        groups[i] = groups[i] | groups[j]
        del groups[j]
        yield list(groups)


def _neighbours(groups: list[frozenset[int]]):
    """Partitions with as many groups: one set moved to another group, or two swapped."""
    for a, ga in enumerate(groups):
        for s in sorted(ga):
            for b, gb in enumerate(groups):
                if a == b:
                    continue
                if len(ga) > 1:
                    moved = list(groups)
                    moved[a], moved[b] = ga - {s}, gb | {s}
                    yield moved
                for t in sorted(gb):
                    if a < b:
                        swapped = list(groups)
                        swapped[a], swapped[b] = ga - {s} | {t}, gb - {t} | {s}
                        yield swapped


def _improve(groups: list[frozenset[int]], cost: _Cost, num_replicas: int,
             max_steps: int = 200) -> list[frozenset[int]]:
    """Local search from a greedy partition: best move or swap while it lowers the key.
    Greedy merging alone can leave groups of very unequal work (e.g. 4 and 6 of the
    default sets at 2 replicas, worse than one group of all 10)."""
    key = cost.key(groups, num_replicas)
    for _ in range(max_steps):
        best = min(((cost.key(n, num_replicas), n) for n in _neighbours(groups)),
                   key=lambda kn: kn[0], default=None)
        if best is None or best[0] >= key:
            break
        key, groups = best
    return groups


def _allocate(work: list[float], num_replicas: int) -> list[int]:
    """One replica per group, then each next one to the group with most work per replica."""
    counts = [1] * len(work)
    for _ in range(num_replicas - len(work)):
        g = max(range(len(work)), key=lambda i: (work[i] / counts[i], -i))
        counts[g] += 1
    return counts


def group_plan(kept_layers: Sequence[frozenset[int]], set_freqs: Sequence[float],
               num_replicas: int, overhead_layers: float = 0.0,
               partial_layer_cost: float = 0.0) -> GroupPlan:
    """The partition and replica counts with the smallest bottleneck (ties: least total
    work, then fewest groups). Raises ValueError for inconsistent inputs.

    A group's step cost is `union + overhead_layers + partial_layer_cost * partial`, in
    layer units, where `partial` counts the layers some but not all of its sets keep
    (those run on a gathered sub-batch of rows)."""
    freqs = _check_inputs(kept_layers, set_freqs, num_replicas)
    for name, value in (("overhead_layers", overhead_layers),
                        ("partial_layer_cost", partial_layer_cost)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be finite and >= 0, got {value}")
    cost = _Cost(kept_layers, freqs, overhead_layers, partial_layer_cost)
    best, best_key = None, None
    for groups in _partitions(cost):
        if len(groups) > num_replicas:
            continue
        groups = sorted(_improve(groups, cost, num_replicas), key=min)
        key = (*cost.key(groups, num_replicas), len(groups))
        if best_key is None or key < best_key:
            best, best_key = groups, key
    work = [cost.work(g) for g in best]
    return GroupPlan(tuple(best), tuple(_allocate(work, num_replicas)), tuple(work))


def assign_groups(kept_layers: Sequence[frozenset[int]], set_freqs: Sequence[float],
                  num_replicas: int, overhead_layers: float = 0.0,
                  partial_layer_cost: float = 0.0) -> list[frozenset[int]]:
    """For each replica, the set ids it serves.

    Every set is served by at least one replica; replica counts per group follow the
    group's work (traffic share x kept-layer union); the partition minimises the busiest
    replica's traffic-weighted union of kept layers.
    """
    return group_plan(kept_layers, set_freqs, num_replicas, overhead_layers,
                      partial_layer_cost).replica_sets()


class DispatchOptions(BaseModel):
    """How `SetAffineDispatcher` spills and regroups. Invalid values raise ValueError."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queueing_load: int = Field(
        16, ge=1, description="A replica with at least this many requests in flight counts "
        "as queueing. A request may spill out of its group only when every replica of the "
        "group is queueing; set it to the engines' max_num_seqs to spill only when "
        "requests actually wait for a batch slot.")
    idle_load: int = Field(
        0, ge=0, description="A replica with at most this many requests in flight counts "
        "as idle; only an idle replica of another group takes a spilled request.")
    max_spill_fraction: float = Field(
        0.1, ge=0.0, le=1.0, description="At most this share of the last `spill_window` "
        "dispatched requests may spill (0 disables spilling): spills keep replicas busy "
        "but widen their kept-layer union, so they are bounded.")
    spill_window: int = Field(
        256, ge=1, description="Number of most recent dispatches `max_spill_fraction` "
        "counts over.")
    initial_freqs: list[float] | None = Field(
        None, description="Prior set frequencies (one per set; None: uniform) the first "
        "groups are made from; observed requests then update them.")
    freq_half_life: float = Field(
        512.0, gt=0.0, description="Observed set frequencies are an exponential moving "
        "average over requests with this half-life (in requests).")
    regroup_every: int = Field(
        64, ge=1, description="Check every this many observed requests whether the "
        "frequencies drifted from those the current groups were made from.")
    drift_threshold: float = Field(
        0.15, gt=0.0, le=1.0, description="Regroup when the total variation distance "
        "between the observed frequencies and the groups' frequencies exceeds this.")
    overhead_layers: float = Field(
        0.0, ge=0.0, description="Per-step cost outside the transformer blocks "
        "(embedding, head, sampling), in layer units, added to each group's kept-layer "
        "union when sizing groups.")
    partial_layer_cost: float = Field(
        0.0, ge=0.0, description="Extra per-step cost, in layer units, of a layer that some "
        "but not all of a group's sets keep (it runs on a gathered sub-batch of rows), "
        "when sizing groups.")

    @model_validator(mode="after")
    def _check(self) -> "DispatchOptions":
        if self.queueing_load <= self.idle_load:
            raise ValueError(f"queueing_load ({self.queueing_load}) must exceed idle_load "
                             f"({self.idle_load}): a replica cannot be idle and queueing")
        if self.initial_freqs is not None and (
                any(not math.isfinite(f) or f < 0 for f in self.initial_freqs)
                or sum(self.initial_freqs) <= 0):
            raise ValueError(f"initial_freqs must be finite, >= 0 and not all 0, got "
                             f"{self.initial_freqs}")
        return self


class SetAffineDispatcher:
    """Picks a replica per request: the least-loaded replica of the group serving its set.

    Holds no in-flight state (the caller passes current loads), so regrouping only changes
    where new requests go; requests already dispatched finish where they are.
    Counters: `served[r]` (set id -> requests sent to replica r), `spills[r]` (requests
    replica r took from outside its group), `regroups`.
    """

    def __init__(self, kept_layers: Sequence[frozenset[int]], num_replicas: int,
                 options: DispatchOptions | None = None):
        self.options = options or DispatchOptions()
        self.kept_layers = [frozenset(k) for k in kept_layers]
        n = len(self.kept_layers)
        prior = self.options.initial_freqs or [1.0] * n
        self._freqs = _check_inputs(self.kept_layers, prior, num_replicas)
        self.num_replicas = num_replicas
        self.served: list[Counter[int]] = [Counter() for _ in range(num_replicas)]
        self.spills = [0] * num_replicas
        self.regroups = 0
        self._recent_spills: deque[bool] = deque(maxlen=self.options.spill_window)
        self._observed = 0
        self._decay = 0.5 ** (1.0 / self.options.freq_half_life)
        self._set_groups(self._assign())

    @property
    def replica_sets(self) -> list[frozenset[int]]:
        """For each replica, the sets it currently serves."""
        return list(self._replica_sets)

    @property
    def freqs(self) -> list[float]:
        """Current estimate of the set frequencies (sums to 1)."""
        return list(self._freqs)

    def group_of(self, set_id: int) -> list[int]:
        """Replica indices serving set_id."""
        self._check_set(set_id)
        return list(self._group[set_id])

    def choose(self, set_id: int, loads: Sequence[int]) -> int:
        """Replica for a request of set_id given each replica's requests in flight."""
        self._check_set(set_id)
        if len(loads) != self.num_replicas:
            raise ValueError(f"loads has {len(loads)} entries for {self.num_replicas} replicas")
        group = self._group[set_id]
        pick = min(group, key=lambda r: (loads[r], self._dispatched(r), r))
        target = self._spill_target(group, loads) if loads[pick] >= self.options.queueing_load \
            else None
        spilled = target is not None
        self._recent_spills.append(spilled)
        if spilled:
            pick = target
            self.spills[pick] += 1
        self.served[pick][set_id] += 1
        return pick

    def observe(self, set_id: int) -> bool:
        """Counts a request of set_id in the frequency estimate; returns True when this
        observation regrouped the replicas."""
        self._check_set(set_id)
        self._freqs = [f * self._decay for f in self._freqs]
        self._freqs[set_id] += 1.0 - self._decay
        self._observed += 1
        if self._observed % self.options.regroup_every:
            return False
        drift = 0.5 * sum(abs(a - b) for a, b in zip(self._freqs, self._plan_freqs))
        if drift <= self.options.drift_threshold:
            return False
        new = self._assign()
        changed = sorted(new, key=sorted) != sorted(self._replica_sets, key=sorted)
        self._set_groups(_keep_places(self._replica_sets, new) if changed
                         else self._replica_sets)
        self.regroups += changed
        return changed

    def counters(self) -> list[dict]:
        """Per replica: its sets, requests served per set, spills taken."""
        return [{"replica": r, "sets": sorted(self._replica_sets[r]),
                 "served": dict(sorted(self.served[r].items())), "spills": self.spills[r]}
                for r in range(self.num_replicas)]

    def _assign(self) -> list[frozenset[int]]:
        return assign_groups(self.kept_layers, self._freqs, self.num_replicas,
                             self.options.overhead_layers, self.options.partial_layer_cost)

    def _spill_target(self, group: tuple[int, ...], loads: Sequence[int]) -> int | None:
        """Least-loaded idle replica outside the group, if the spill budget allows."""
        budget = self.options.max_spill_fraction * self.options.spill_window
        if sum(self._recent_spills) + 1 > budget:
            return None
        idle = [r for r in range(self.num_replicas)
                if r not in group and loads[r] <= self.options.idle_load]
        return min(idle, key=lambda r: (loads[r], self._dispatched(r), r)) if idle else None

    def _dispatched(self, replica: int) -> int:
        return sum(self.served[replica].values())

    def _set_groups(self, replica_sets: list[frozenset[int]]) -> None:
        self._replica_sets = list(replica_sets)
        self._plan_freqs = list(self._freqs)
        self._group = {s: tuple(r for r, sets in enumerate(replica_sets) if s in sets)
                       for s in range(len(self.kept_layers))}

    def _check_set(self, set_id: int) -> None:
        if isinstance(set_id, bool) or not isinstance(set_id, int) \
                or not 0 <= set_id < len(self.kept_layers):
            raise ValueError(f"set id {set_id!r} is not in the pool (0..{len(self.kept_layers) - 1})")


def _keep_places(old: list[frozenset[int]], new: list[frozenset[int]]) -> list[frozenset[int]]:
    """Orders the new per-replica sets so that replicas keep as many of their old sets as
    possible (greedy by overlap), so a regroup moves few sets and their prefix caches."""
    placed: list[frozenset[int] | None] = [None] * len(old)
    pending = list(new)
    pairs = sorted(((len(o & n), -r, -i) for r, o in enumerate(old) for i, n in enumerate(new)),
                   reverse=True)
    used = set()
    for _, neg_r, neg_i in pairs:
        r, i = -neg_r, -neg_i
        if placed[r] is None and i not in used:
            placed[r] = pending[i]
            used.add(i)
    return [p for p in placed]
