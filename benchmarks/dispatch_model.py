"""What set-affine dispatch should gain: a prediction from one-engine figures, and a
simulator of replicas under a step-cost model.

Why: two cores cannot show the gain of many replicas, so the scale-out figures come from a
model calibrated on one engine. Two models, used by simulate_dispatch.py and
bench_dispatch.py:

- `composition_prediction`: from the measured one-engine decode speed of k mixed sets
  relative to one set (issue 12: 2 sets 0.922, 5 sets 0.880, 10 sets 0.821; 16 requests x
  32 prompt / 128 output, 1 core, n = 3 reps), the affine/set-blind ratio is
  speed(sets per replica, affine) / speed(sets per replica, set-blind).
- `StepCost` + `simulate`: a decode step of B rows whose sets keep the union U of layers,
  P of them kept by some rows only (run on a gathered sub-batch), costs `a + b*B + c*U +
  d*P` seconds (plus `p` per prompt token prefilled in the step);
  replicas run continuous batches of at most `max_seqs` rows; requests arrive at once
  (as in the benchmark) and are dispatched by `SetAffineDispatcher` (affine) or by least
  in-flight count with rotating ties, as vLLM's balancer does (set-blind).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

from harness import percentile

COMPOSITION = {1: 1.0, 2: 0.922, 5: 0.880, 10: 0.821}
"""Decode throughput of k sets mixed in one engine relative to one set (issue 12)."""


def mixed_speed(k: float, points: dict[int, float] = COMPOSITION) -> float:
    """Relative decode speed of k sets mixed, interpolated linearly in log k."""
    ks = sorted(points)
    k = min(max(k, ks[0]), ks[-1])
    for lo, hi in zip(ks, ks[1:]):
        if k <= hi:
            w = (math.log(k) - math.log(lo)) / (math.log(hi) - math.log(lo))
            return points[lo] + w * (points[hi] - points[lo])
    return points[ks[-1]]


def composition_prediction(num_sets: int, num_replicas: int) -> dict:
    """Affine vs set-blind over replicas for uniform traffic on num_sets sets.

    Set-blind: every replica's batches mix all num_sets sets. Affine: each replica serves
    ceil(num_sets / num_replicas) sets (one when replicas >= sets).
    """
    per_replica = max(1, math.ceil(num_sets / num_replicas))
    blind, affine = mixed_speed(num_sets), mixed_speed(per_replica)
    return {"sets": num_sets, "replicas": num_replicas, "sets_per_replica_affine": per_replica,
            "speed_blind": blind, "speed_affine": affine, "affine_over_blind": affine / blind}


@dataclass(frozen=True)
class StepCost:
    """Seconds of one engine step: a + b*rows + c*union + d*partial + p*prefill tokens
    (union: layers some row keeps; partial: layers some but not all rows keep)."""

    a: float
    b: float
    c: float
    d: float = 0.0
    p: float = 0.0

    def step(self, rows: int, union: int, partial: int = 0, prefill_tokens: int = 0) -> float:
        return (self.a + self.b * rows + self.c * union + self.d * partial
                + self.p * prefill_tokens)

    def overhead_layers(self, rows: int) -> float:
        """The non-layer part of a step at `rows` rows, in units of one layer's cost."""
        return max(0.0, (self.a + self.b * rows) / self.c) if self.c > 0 else 0.0

    def partial_layer_cost(self) -> float:
        """A partial layer's extra cost in units of one layer's cost."""
        return max(0.0, self.d / self.c) if self.c > 0 else 0.0


def fit_step_cost(points: Sequence[tuple[int, int, int, float]], p: float = 0.0) -> StepCost:
    """Least squares of step seconds on (rows, union, partial): points are
    (rows, union, partial, seconds)."""
    import numpy as np

    x = np.array([[1.0, r, u, q] for r, u, q, _ in points])
    y = np.array([s for *_, s in points])
    (a, b, c, d), *_ = np.linalg.lstsq(x, y, rcond=None)
    return StepCost(float(a), float(b), float(c), float(d), p)


@dataclass
class _Request:
    set_id: int
    left: int  # tokens still to generate
    prefilled: bool = False
    done_at: float = 0.0


def _replica_time(requests: list[_Request], masks: list[int], cost: StepCost,
                  max_seqs: int, prompt: int) -> float:
    """Runs one replica's requests to completion (continuous batching); returns seconds."""
    t, waiting, running = 0.0, list(requests), []
    while waiting or running:
        admitted = waiting[:max_seqs - len(running)]
        waiting = waiting[len(admitted):]
        running += admitted
        union, common = 0, -1
        for r in running:
            union |= masks[r.set_id]
            common &= masks[r.set_id]
        t += cost.step(len(running), union.bit_count(),
                       union.bit_count() - common.bit_count(), prompt * len(admitted))
        for r in running:
            r.left -= 1
            if r.left == 0:
                r.done_at = t
        running = [r for r in running if r.left > 0]
    return t


def simulate(kept_layers: Sequence[frozenset[int]], set_ids: Sequence[int], num_replicas: int,
             cost: StepCost, affine: bool, prompt: int = 32, out: int = 128,
             max_seqs: int = 256, freqs: Sequence[float] | None = None) -> dict:
    """Decode throughput (tokens/s) and latencies of one burst of requests.

    affine: `SetAffineDispatcher` with groups from `freqs` (default: the burst's own set
    frequencies, as the dispatcher observes them in a steady state) and the step-cost
    overhead at half a batch; set-blind: least in-flight, ties rotating.
    """
    from vllm_pudding.dispatch.policy import DispatchOptions, SetAffineDispatcher

    masks = [sum(1 << layer for layer in k) for k in kept_layers]
    if freqs is None:
        freqs = [set_ids.count(s) for s in range(len(kept_layers))]
    per_replica: list[list[_Request]] = [[] for _ in range(num_replicas)]
    rows = max(1, min(max_seqs, len(set_ids) // num_replicas))
    if affine:
        options = DispatchOptions(initial_freqs=list(freqs), regroup_every=10 ** 9,
                                  overhead_layers=cost.overhead_layers(rows),
                                  partial_layer_cost=cost.partial_layer_cost())
        dispatcher = SetAffineDispatcher(kept_layers, num_replicas, options)
    start = 0
    for s in set_ids:
        loads = [len(q) for q in per_replica]
        if affine:
            pick = dispatcher.choose(s, loads)
        else:
            pick = min(range(num_replicas),
                       key=lambda r: (loads[r], (r - start) % num_replicas))
            start += 1
        per_replica[pick].append(_Request(s, out))
    times = [_replica_time(q, masks, cost, max_seqs, prompt) for q in per_replica if q]
    done = sorted(r.done_at for q in per_replica for r in q)
    makespan = max(times)
    return {"tokens_per_s": len(set_ids) * out / makespan, "makespan_s": makespan,
            "p50_s": percentile(done, 0.5), "p99_s": percentile(done, 0.99),
            "replica_sets": [sorted({r.set_id for r in q}) for q in per_replica]}


def draw_sets(freqs: Sequence[float], n: int, seed: int) -> list[int]:
    """n set ids drawn from freqs, seeded."""
    rng = random.Random(seed)
    return rng.choices(range(len(freqs)), weights=freqs, k=n)


def simulate_steady(kept_layers: Sequence[frozenset[int]], freqs: Sequence[float],
                    num_replicas: int, cost: StepCost, affine: bool, concurrency: int = 32,
                    requests_per_replica: int = 200, prompt: int = 32, out: int = 128,
                    max_seqs: int = 256, seed: int = 0) -> dict:
    """Decode throughput of a saturated closed loop: `concurrency` x replicas clients,
    each sending its next request (set drawn from freqs, seeded) when the last one ends.

    Unlike a burst, a group with more traffic per replica than another does not leave
    the other idle at the end: batches grow where traffic is heavier. Throughput counts
    the requests finishing between the 20th and 80th percentile of completions (no
    start-up or drain).
    """
    import heapq

    from vllm_pudding.dispatch.policy import DispatchOptions, SetAffineDispatcher

    rng = random.Random(seed)
    masks = [sum(1 << layer for layer in k) for k in kept_layers]
    if affine:
        options = DispatchOptions(initial_freqs=list(freqs), regroup_every=10 ** 9,
                                  overhead_layers=cost.overhead_layers(concurrency),
                                  partial_layer_cost=cost.partial_layer_cost())
        dispatcher = SetAffineDispatcher(kept_layers, num_replicas, options)
    waiting = [[] for _ in range(num_replicas)]
    running = [[] for _ in range(num_replicas)]
    busy = [False] * num_replicas
    heap: list[tuple[float, int]] = []
    total = requests_per_replica * num_replicas
    issued, finished_at, start = 0, [], 0

    def start_step(r: int, t: float) -> None:
        admitted = waiting[r][:max_seqs - len(running[r])]
        del waiting[r][:len(admitted)]
        running[r] += admitted
        union, common = 0, -1
        for req in running[r]:
            union |= masks[req.set_id]
            common &= masks[req.set_id]
        dt = cost.step(len(running[r]), union.bit_count(),
                       union.bit_count() - common.bit_count(), prompt * len(admitted))
        busy[r] = True
        heapq.heappush(heap, (t + dt, r))

    def dispatch(t: float) -> None:
        nonlocal issued, start
        s = rng.choices(range(len(freqs)), weights=freqs)[0]
        loads = [len(w) + len(q) for w, q in zip(waiting, running)]
        if affine:
            pick = dispatcher.choose(s, loads)
        else:
            pick = min(range(num_replicas), key=lambda r: (loads[r], (r - start) % num_replicas))
            start += 1
        waiting[pick].append(_Request(s, out))
        issued += 1
        if not busy[pick]:
            start_step(pick, t)

    for _ in range(concurrency * num_replicas):
        dispatch(0.0)
    while heap:
        t, r = heapq.heappop(heap)
        busy[r] = False
        for req in running[r]:
            req.left -= 1
        done = [req for req in running[r] if req.left == 0]
        running[r] = [req for req in running[r] if req.left > 0]
        finished_at += [t] * len(done)
        if running[r] or waiting[r]:
            start_step(r, t)
        for _ in done:
            if issued < total:
                dispatch(t)
    finished_at.sort()
    lo, hi = int(0.2 * len(finished_at)), int(0.8 * len(finished_at))
    return {"tokens_per_s": (hi - lo) * out / (finished_at[hi] - finished_at[lo]),
            "spills": sum(dispatcher.spills) if affine else 0,
            "replica_sets": [sorted(s) for s in dispatcher.replica_sets] if affine else None}
