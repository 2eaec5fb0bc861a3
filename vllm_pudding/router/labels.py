"""Router training rows: each example scored under every candidate set, as matrices.

Input: the JSON of `python -m vllm_pudding.eval --sets all --out F` (per-example,
per-choice log-probs under each pool set, computed through the engine), on the
train split for labels or the validation split for reporting. Several files (runs
split across processes or tasks) merge by run label and task, a later file's task
replacing an earlier one's.

Label targets per (example, set):
- "likelihood": mean per-token log-prob of the correct continuation (the paper's);
- "choice_logprob": log-softmax over the choices, at the correct one, of the task's
  metric scores (summed log-probs for acc; for acc_norm per character of the choice,
  `eval.metrics.normalized_scores`): how surely the set picks the right answer, the
  quantity accuracy thresholds;
- "correct": 1 when the set's prediction is right under the task's metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vllm_pudding.data.mc import MCExample
from vllm_pudding.data.tasks import METRIC
from vllm_pudding.eval.metrics import normalized_scores
from vllm_pudding.eval.stored import read_results

TARGETS = ("likelihood", "choice_logprob", "correct")


def router_text(ex: MCExample) -> str:
    """The prompt a router reads for an example: its shared context; for per-choice
    contexts (WinoGrande) the sentence with a blank where the options go."""
    if len(ex.contexts) == 1:
        return ex.contexts[0]
    import os.path

    stem = os.path.commonprefix(list(ex.contexts))
    return f"{stem}_{ex.continuations[0]}"


@dataclass
class TaskTable:
    task: str
    doc_ids: list[str]
    gold: np.ndarray        # [n]
    scores: np.ndarray      # [n, sets, choices]: metric score per choice (nan-padded)
    mean_lp: np.ndarray     # [n, sets]: mean per-token log-prob of the gold choice

    def target(self, name: str) -> np.ndarray:
        if name == "likelihood":
            return self.mean_lp
        if name == "choice_logprob":
            s = np.where(np.isnan(self.scores), -np.inf, self.scores)
            m = s.max(-1, keepdims=True)
            lse = m[..., 0] + np.log(np.exp(s - m).sum(-1))
            gold = np.take_along_axis(s, self.gold[:, None, None].repeat(s.shape[1], 1), -1)
            return gold[..., 0] - lse
        if name == "correct":
            return self.correct.astype(np.float64)
        raise ValueError(f"unknown target {name!r}; known: {', '.join(TARGETS)}")

    @property
    def correct(self) -> np.ndarray:
        """[n, sets] bool: the set's prediction (argmax, first on ties) is the gold one."""
        s = np.where(np.isnan(self.scores), -np.inf, self.scores)
        return s.argmax(-1) == self.gold[:, None]


def _metric_scores(ex: dict, metric: str) -> list[float]:
    if metric == "acc_norm":
        return normalized_scores(ex["logprobs"], ex["num_chars"]).tolist()
    return list(ex["logprobs"])


def load_tables(paths: Sequence[Path], num_sets: int, prefix: str = "set") -> dict[str, TaskTable]:
    """Per task, the examples scored under every pool set `set0..set{num_sets-1}`."""
    runs: dict[str, dict] = {}
    for p in paths:  # per (label, task): a later file's task replaces an earlier file's
        for label, tasks in read_results(p).get("examples", {}).items():
            runs.setdefault(label, {}).update(tasks)
    labels = [f"{prefix}{i}" for i in range(num_sets)]
    missing = [l for l in labels if l not in runs]
    if missing:
        raise ValueError(f"{', '.join(map(str, paths))}: no per-example scores for {missing}")
    return {task: table_from_examples(task, [runs[l][task] for l in labels])
            for task in runs[labels[0]]}


def table_from_examples(task: str, per_set: list[list[dict]]) -> TaskTable:
    """One task's examples as scored under each set (ScoredExample dicts, same order)."""
    n, num_sets = len(per_set[0]), len(per_set)
    if any(len(x) != n for x in per_set):
        raise ValueError(f"task {task}: sets scored different example counts")
    metric = METRIC.get(task, "acc")
    width = max(len(e["logprobs"]) for e in per_set[0])
    scores = np.full((n, num_sets, width), np.nan)
    mean_lp = np.zeros((n, num_sets))
    for s, exs in enumerate(per_set):
        for i, e in enumerate(exs):
            if e["doc_id"] != per_set[0][i]["doc_id"]:
                raise ValueError(f"task {task}: example order differs between sets")
            sc = _metric_scores(e, metric)
            scores[i, s, :len(sc)] = sc
            g = e["gold"]
            mean_lp[i, s] = e["logprobs"][g] / max(e["num_tokens"][g], 1)
    return TaskTable(task, [e["doc_id"] for e in per_set[0]],
                     np.array([e["gold"] for e in per_set[0]]), scores, mean_lp)


def routed_accuracy(table: TaskTable, choice: Sequence[int]) -> float:
    """Accuracy (task metric) when example i runs under set choice[i]."""
    c = table.correct
    return float(c[np.arange(len(choice)), np.asarray(choice)].mean()) if len(choice) else math.nan
