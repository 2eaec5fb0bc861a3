"""The pool rule of BENCHMARKS.md, on the records of the greedy runs.

- Union of the greedy results (6 tasks x 2 losses = 12 runs), as sets of omitted
  layers, deduplicated. A set found by several runs keeps every finder's provenance.
- Fewer than `size` distinct sets: fill from the runner-up removals of the last greedy
  step, i.e. the run's first k-1 removals plus its 2nd-best last candidate, then the
  3rd-best, ...; round-robin over the runs by runner-up rank (all runs' 2nd-best
  before any 3rd-best), runs in their given order; sets already present are skipped.
- Sets an `admissible` filter rejects (the generation-sanity bound) are skipped first.
- More than `size`: keep the `size` sets with the best mean rank across tasks. Each
  task ranks all candidate sets by its own calibration loss, once per loss (rank 1 =
  lowest loss, ties share the mean rank); a set's mean rank is the mean over these
  task x loss columns. Ties in mean rank: earlier found first.

The same rule with a smaller prefix k (e.g. 4) gives that k's pool from the same runs
(the first k removals; runner-ups from step k's ranking).

Everything here is pure: scores come from a callback, so tests run on hand-made records.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from vllm_pudding.search.greedy import GreedyRun

Score = Callable[[str, tuple[int, ...]], dict]
"""score(task, omitted set) -> {"likelihood": ..., "margin": ..., ...} on that task's
calibration examples."""


def greedy_sets(runs: Sequence[GreedyRun], k: int) -> dict[tuple[int, ...], list[dict]]:
    """Distinct sets of the runs' first k removals -> provenance of every run finding it
    (dict order: first finder first)."""
    out: dict[tuple[int, ...], list[dict]] = {}
    for r in runs:
        if len(r.order) < k:
            raise ValueError(f"{r.task}/{r.loss}: only {len(r.order)} steps, need {k}")
        key = tuple(sorted(r.order[:k]))
        out.setdefault(key, []).append({
            "source": "greedy", "task": r.task, "loss": r.loss,
            "order": list(r.order[:k]), "step_losses": list(r.step_losses[:k])})
    return out


def runner_ups(runs: Sequence[GreedyRun], k: int) -> Iterator[tuple[tuple[int, ...], dict]]:
    """(set, provenance) of the last step's runner-ups, in fill order (see module doc)."""
    depth = max(len(r.rankings[k - 1]) for r in runs)
    for rank in range(1, depth):
        for r in runs:
            ranking = r.rankings[k - 1]
            if rank >= len(ranking):
                continue
            layer, value = ranking[rank]
            order = list(r.order[:k - 1]) + [int(layer)]
            yield tuple(sorted(order)), {
                "source": "runner_up", "task": r.task, "loss": r.loss, "rank": rank + 1,
                "order": order, "step_losses": list(r.step_losses[:k - 1]) + [value]}


def mean_ranks(sets: Sequence[tuple[int, ...]], tasks: Sequence[str],
               loss_names: Sequence[str], score: Score) -> dict[tuple[int, ...], float]:
    """Mean over the task x loss columns of each set's rank within the column."""
    totals = {s: 0.0 for s in sets}
    cols = 0
    for task in tasks:
        table = {s: score(task, s) for s in sets}
        for name in loss_names:
            vals = {s: table[s][name] for s in sets}
            for s in sets:
                v = vals[s]
                below = sum(1 for x in vals.values() if x < v)
                equal = sum(1 for x in vals.values() if x == v)
                totals[s] += below + (equal + 1) / 2
            cols += 1
    return {s: t / cols for s, t in totals.items()}


def select_pool(runs: Sequence[GreedyRun], k: int, size: int = 10,
                score: Score | None = None,
                admissible: Callable[[tuple[int, ...]], bool] | None = None) -> list[dict]:
    """The pool: [{"layers": [...], "provenance": [...], "mean_rank"?: float}, ...].

    `admissible` (e.g. the generation-sanity bound): sets it rejects never enter the pool,
    neither from the greedy results nor as runner-ups.
    """
    ok = admissible or (lambda _s: True)
    found = {s: p for s, p in greedy_sets(runs, k).items() if ok(s)}
    if len(found) < size:
        for key, prov in runner_ups(runs, k):
            if len(found) >= size:
                break
            if key not in found and ok(key):
                found[key] = [prov]
        return [{"layers": list(s), "provenance": p} for s, p in found.items()]
    if len(found) == size:
        return [{"layers": list(s), "provenance": p} for s, p in found.items()]
    if score is None:
        raise ValueError(f"{len(found)} distinct sets > {size}: ranking needs `score`")
    tasks = list(dict.fromkeys(r.task for r in runs))
    loss_names = list(dict.fromkeys(r.loss for r in runs))
    ranks = mean_ranks(list(found), tasks, loss_names, score)
    first = {s: i for i, s in enumerate(found)}
    keep = sorted(found, key=lambda s: (ranks[s], first[s]))[:size]
    return [{"layers": list(s), "provenance": found[s], "mean_rank": ranks[s]} for s in keep]


def dropped_sets(runs: Sequence[GreedyRun], k: int, pool: Sequence[dict]) -> list[list[int]]:
    """Greedy results left out of the pool, by the rank rule or the admissibility filter
    (for the record)."""
    kept = {tuple(e["layers"]) for e in pool}
    return [list(s) for s in greedy_sets(runs, k) if s not in kept]
