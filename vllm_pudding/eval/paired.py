"""Comparisons on the same examples: the task router, and paired bootstrap intervals.

Why: routed PuDDing and a static set are scored on the same validation examples, so the
question "is routing better" is about their per-example difference, whose interval is
much narrower than the two accuracies' own intervals. The *task router* is the baseline
any prompt router must beat: the format of a prompt gives its task away, so picking the
best set per task (on train rows) and applying it by task costs nothing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from vllm_pudding.eval.run import RunResult, task_result


def task_router_run(runs: Sequence[RunResult], train_tables: dict, label: str = "task router",
                    allowed: Sequence[int] | None = None) -> tuple[RunResult, dict[str, int]]:
    """Each validation example scored under its task's best set on the train label rows
    (`router.labels.TaskTable`, the task's own metric), among the `allowed` sets (None:
    all; a pool's `routable_sets`, as for the prompt routers). Returns the run and sets."""
    by_set = {int(r.label[3:]): r for r in runs
              if r.label.startswith("set") and r.label[3:].isdigit()}
    best = best_set_per_task({t: tab.correct for t, tab in train_tables.items()},
                             sorted(by_set) if allowed is None else allowed)
    tasks, examples = {}, {}
    for task in by_set[0].examples:
        if task not in best:
            continue
        exs = by_set[best[task]].examples[task]
        examples[task], tasks[task] = exs, task_result(task, exs)
    return RunResult(label=label, layers=None, tasks=tasks, examples=examples), best


def best_set_per_task(correct: dict[str, np.ndarray], allowed: Sequence[int]) -> dict[str, int]:
    """Per task, the allowed set with the highest mean correctness over the rows of its
    [rows, sets] matrix (the first on ties)."""
    ids = np.array(list(allowed))
    return {t: int(ids[c.mean(0)[ids].argmax()]) for t, c in correct.items()}


def correct_matrix(run: RunResult, task: str) -> np.ndarray:
    """Per example of `task`, whether `run` got it right under the task's metric."""
    metric = run.tasks[task].metric
    return np.array([e.correct_norm if metric == "acc_norm" else e.correct
                     for e in run.examples[task]], dtype=np.float64)


def paired_difference(a: RunResult, b: RunResult, tasks: Sequence[str], reps: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
    """(avg over tasks of a's accuracy minus b's, 95% low, high): a bootstrap over the
    examples of each task, the same resampled examples for both runs."""
    diffs = []
    for task in tasks:
        ea, eb = a.examples[task], b.examples[task]
        if [e.doc_id for e in ea] != [e.doc_id for e in eb]:
            raise ValueError(f"{task}: {a.label} and {b.label} scored different examples")
        diffs.append(correct_matrix(a, task) - correct_matrix(b, task))
    return paired_bootstrap(diffs, reps, seed)


def paired_bootstrap(diffs: Sequence[np.ndarray], reps: int = 2000,
                     seed: int = 0) -> tuple[float, float, float]:
    """(mean over tasks of the per-example differences' mean, 95% low, high): each task's
    examples resampled with replacement, `reps` times, in task order."""
    rng = np.random.default_rng(seed)
    boot = np.zeros(reps)
    for d in diffs:
        boot += d[rng.integers(0, len(d), size=(reps, len(d)))].mean(1)
    low, high = np.percentile(boot / len(diffs), [2.5, 97.5])
    return float(np.mean([d.mean() for d in diffs])), float(low), float(high)
