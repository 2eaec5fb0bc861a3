"""SLEB-style greedy layer removal for one task, both calibration losses at once.

Each of k steps tries removing every remaining layer except the first alive one
(layer 0) and the last (layer L-1), and drops the one with the lowest loss (ties: the
lower layer index, as the paper's code's strict ``<``). The removal order is kept, so
the first 4 removals are the k=4 set of the same run, and each step keeps its full
candidate ranking (the runner-ups).

Exact speed-ups (the losses are those of `scoring.losses`, nothing approximated):
- a trial that removes kept[j] starts from the cached hidden state entering kept[j]
  and runs only kept[j+1:];
- one trial serves both losses: trial results are cached per removed *set* (frozenset),
  so while the likelihood and margin runs agree they share every trial, and after they
  diverge any removed set both reach ({a, b} reached as a-then-b and b-then-a) is
  computed once;
- prefix states are reused across steps and across the two runs (longest common
  prefix of the kept lists).

`greedy_task` is resumable: pass the `TrialCache` and the run records of a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from vllm_pudding.search.scoring import LOSSES, TaskScorer, losses


@dataclass
class GreedyRun:
    """One task x loss greedy run."""

    task: str
    loss: str
    order: list[int] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    rankings: list[list[list]] = field(default_factory=list)
    """Per step: every candidate as [layer, loss], best first."""

    def to_json(self) -> dict:
        return {"task": self.task, "loss": self.loss, "order": list(self.order),
                "step_losses": list(self.step_losses), "rankings": self.rankings}

    @classmethod
    def from_json(cls, d: dict) -> "GreedyRun":
        return cls(d["task"], d["loss"], list(d["order"]), list(d["step_losses"]),
                   [list(map(list, r)) for r in d["rankings"]])


class TrialCache:
    """Loss values per removed set (frozenset of layer ids); JSON-able."""

    def __init__(self, entries: dict | None = None):
        self.entries: dict[frozenset, dict] = dict(entries or {})

    def __contains__(self, removed) -> bool:
        return frozenset(removed) in self.entries

    def __getitem__(self, removed) -> dict:
        return self.entries[frozenset(removed)]

    def __setitem__(self, removed, value: dict) -> None:
        self.entries[frozenset(removed)] = value

    def __len__(self) -> int:
        return len(self.entries)

    def to_json(self) -> list:
        return [{"removed": sorted(k), **v}
                for k, v in sorted(self.entries.items(), key=lambda kv: (len(kv[0]), sorted(kv[0])))]

    @classmethod
    def from_json(cls, rows: Iterable[dict]) -> "TrialCache":
        return cls({frozenset(r["removed"]): {k: v for k, v in r.items() if k != "removed"}
                    for r in rows})


def candidates(kept: Sequence[int]) -> list[int]:
    """Layers a step may remove: all alive ones but the first and the last."""
    return list(kept[1:-1])


def evaluate(scorer: TaskScorer, removed: Iterable[int], num_layers: int,
             cache: TrialCache, bases: Sequence[tuple] = ()) -> dict:
    """Losses of one removed set, from the cache or computed (and cached). `bases`:
    (kept, states) pairs whose common prefix with this set's kept layers is reused."""
    removed = frozenset(removed)
    if removed not in cache:
        kept = [i for i in range(num_layers) if i not in removed]
        j, start = 0, None
        for bk, bs in bases:
            n = min(_common(bk, kept), len(bs) - 1)
            if n > j or start is None:
                j, start = n, bs[n]
        if start is None:
            start = scorer.embed()
        lp = scorer.run(start, kept[j:])
        cache[removed] = losses(lp, scorer.packed.gold)
    return cache[removed]


def greedy_task(scorer: TaskScorer, task: str, num_layers: int, k: int,
                loss_names: Sequence[str] = LOSSES, cache: TrialCache | None = None,
                runs: dict[str, GreedyRun] | None = None,
                on_trial: Callable[[bool, int], None] | None = None,
                on_step: Callable[[dict[str, GreedyRun], TrialCache], None] | None = None,
                ) -> tuple[dict[str, GreedyRun], TrialCache]:
    """k greedy steps per loss on one task's packed examples (see module doc).

    `on_trial(computed, n_runs)` is called after every trial (computed or taken
    from the cache) with the number of runs it served; `on_step` after every
    completed step with the runs and the cache (checkpointing)."""
    if num_layers - 2 < k:
        raise ValueError(f"k={k} too large for {num_layers} layers")
    cache = cache if cache is not None else TrialCache()
    runs = runs if runs is not None else {}
    for name in loss_names:
        runs.setdefault(name, GreedyRun(task, name))
    held: list[tuple[list[int], list]] = []  # (kept, states) reusable prefixes

    def states_for(kept: list[int]) -> list:
        base = max(held, key=lambda kb: _common(kb[0], kept), default=None)
        return scorer.prefix_states(kept, len(kept) - 2, base)

    if frozenset() not in cache:  # the dense model, for reference
        kept = list(range(num_layers))
        st = states_for(kept)
        held.append((kept, st))
        cache[frozenset()] = losses(scorer.run(st[-1], kept[len(st) - 1:]), scorer.packed.gold)

    while True:
        todo = [r for r in runs.values() if len(r.order) < k]
        if not todo:
            break
        step = min(len(r.order) for r in todo)
        groups: dict[frozenset, list[GreedyRun]] = {}
        for r in todo:
            if len(r.order) == step:
                groups.setdefault(frozenset(r.order), []).append(r)
        new_held = []
        for removed, group in groups.items():
            kept = [i for i in range(num_layers) if i not in removed]
            cands = candidates(kept)
            missing = [c for c in cands if removed | {c} not in cache]
            states = None
            if missing:
                states = states_for(kept)
                new_held.append((kept, states))
            for j, c in enumerate(kept):
                if c not in cands:
                    continue
                if c in missing:
                    lp = scorer.run(states[j], kept[j + 1:])
                    cache[removed | {c}] = losses(lp, scorer.packed.gold)
                if on_trial:
                    on_trial(c in missing, len(group))
            for r in group:
                ranking = sorted(cands, key=lambda c: (cache[removed | {c}][r.loss], c))
                best = ranking[0]
                r.order.append(best)
                r.step_losses.append(cache[removed | {best}][r.loss])
                r.rankings.append([[c, cache[removed | {c}][r.loss]] for c in ranking])
        held = new_held or held
        if on_step:
            on_step(runs, cache)
    return runs, cache


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def planned_trials(num_layers: int, k: int) -> int:
    """Trials of one run: (L-2) + (L-3) + ... over k steps."""
    return sum(num_layers - 2 - s for s in range(k))
