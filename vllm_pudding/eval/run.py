"""Evaluation runs: tasks x labelled set choices -> metrics, oracle rows, tables, JSON.

A *run* is a label (e.g. "dense", "set3", "sleb") with the engine and set choice that
produce it. Each (run, task) is one `llm.generate` call (`score_examples`). Results keep
every example's per-choice log-probs, so the oracle rows here and router labels later
need no re-scoring.

Oracle rows (upper bounds of routers over the pool's candidates, "set*" runs):
- `oracle-task`: per task, the candidate with the best metric on that task (a perfect
  task-level router; the "oracle best candidate per task" of the issue). Which candidate
  it picked is listed.
- `oracle-example`: per example, correct when any candidate gets it right (a perfect
  per-prompt router; optimistic: it also counts lucky guesses).
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import msgspec

from vllm_pudding.data.mc import MCExample
from vllm_pudding.data.tasks import CALIBRATION_TASKS, METRIC, UNSEEN_TASKS
from vllm_pudding.eval.metrics import ACC_NORM, INTERVAL, Estimate, accuracy, mean_of
from vllm_pudding.eval.scoring import ScoredExample, ScoreStats, score_examples


class TaskResult(msgspec.Struct):
    task: str
    metric: str
    """The reported metric of the task: "acc" or "acc_norm"."""
    acc: Estimate
    acc_norm: Estimate
    seconds: float = 0.0
    requests: int = 0
    prompt_tokens: int = 0
    picked: str | None = None
    """oracle-task rows: the candidate that was picked."""

    @property
    def value(self) -> Estimate:
        return self.acc if self.metric == "acc" else self.acc_norm


class RunResult(msgspec.Struct):
    label: str
    layers: list[int] | None
    """The omitted layers of the run's set (None: dense / per-example / unknown)."""
    tasks: dict[str, TaskResult]
    examples: dict[str, list[ScoredExample]] = {}


def task_result(task: str, scored: Sequence[ScoredExample], stats: ScoreStats | None = None,
                ) -> TaskResult:
    stats = stats or ScoreStats()
    return TaskResult(task=task, metric=METRIC.get(task, "acc"),
                      acc=accuracy(s.correct for s in scored),
                      acc_norm=accuracy(s.correct_norm for s in scored),
                      seconds=stats.seconds, requests=stats.requests,
                      prompt_tokens=stats.prompt_tokens)


def evaluate_run(llm, tokenizer, label: str, data: Mapping[str, Sequence[MCExample]],
                 sets: Any, layers: list[int] | None = None, *, log=print,
                 keep_examples: bool = True, **score_kw) -> RunResult:
    """Scores every task of `data` under one set choice (one generate call per task)."""
    tasks, examples = {}, {}
    for task, exs in data.items():
        stats = ScoreStats()
        scored = score_examples(llm, tokenizer, exs, sets, stats=stats, **score_kw)
        tasks[task] = task_result(task, scored, stats)
        if keep_examples:
            examples[task] = scored
        if log:
            r = tasks[task]
            log(f"  {label:>14} {task:<14} {r.metric:<8} {r.value.fmt()}  n={r.value.n}  "
                f"{r.seconds:6.1f}s  {r.prompt_tokens / max(r.seconds, 1e-9):6.0f} tok/s")
    return RunResult(label=label, layers=layers, tasks=tasks, examples=examples)


def oracle_rows(runs: Sequence[RunResult], prefix: str = "set") -> list[RunResult]:
    """`oracle-task` and `oracle-example` over the runs whose label starts with `prefix`."""
    cands = [r for r in runs if r.label.startswith(prefix)]
    if len(cands) < 1:
        return []
    by_task: dict[str, TaskResult] = {}
    by_example: dict[str, TaskResult] = {}
    for task in cands[0].tasks:
        if not all(task in r.tasks for r in cands):
            continue
        best = max(cands, key=lambda r: r.tasks[task].value.value)
        by_task[task] = msgspec.structs.replace(best.tasks[task], picked=best.label,
                                                seconds=0.0, requests=0, prompt_tokens=0)
        if all(task in r.examples for r in cands):
            per = list(zip(*(r.examples[task] for r in cands)))
            metric = METRIC.get(task, "acc")
            acc = accuracy(any(s.correct for s in ex) for ex in per)
            norm = accuracy(any(s.correct_norm for s in ex) for ex in per)
            by_example[task] = TaskResult(task=task, metric=metric, acc=acc, acc_norm=norm)
    rows = [RunResult(label="oracle-task", layers=None, tasks=by_task)]
    if by_example:
        rows.append(RunResult(label="oracle-example", layers=None, tasks=by_example))
    return rows


def averages(run: RunResult) -> dict[str, Estimate]:
    """avg6 (the six calibration tasks) and avg-unseen (OpenBookQA, MMLU), where all present."""
    out = {}
    for name, group in (("avg6", CALIBRATION_TASKS), ("avg-unseen", UNSEEN_TASKS)):
        if all(t in run.tasks for t in group):
            out[name] = mean_of([run.tasks[t].value for t in group])
    return out


def markdown_table(runs: Sequence[RunResult], digits: int = 1) -> str:
    """Rows = runs, columns = tasks (their reported metric) and averages; n in the header."""
    tasks: list[str] = []
    for r in runs:
        tasks += [t for t in r.tasks if t not in tasks]
    avg_names = [a for a in ("avg6", "avg-unseen") if any(a in averages(r) for r in runs)]
    ns = {t: next(r.tasks[t].value.n for r in runs if t in r.tasks) for t in tasks}
    head = ["run", "omitted layers"] + [f"{t} ({METRIC.get(t, 'acc')}, n={ns[t]})"
                                        for t in tasks] + avg_names
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        avg = averages(r)
        cells = [r.label, "" if r.layers is None else str(r.layers)]
        for t in tasks:
            if t not in r.tasks:
                cells.append("")
                continue
            res = r.tasks[t]
            cell = res.value.fmt(digits)
            if res.picked:
                cell += f" ({res.picked})"
            cells.append(cell)
        cells += [avg[a].fmt(digits) if a in avg else "" for a in avg_names]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Percent; brackets: {INTERVAL}. {ACC_NORM}")
    return "\n".join(lines)


def timing_table(runs: Sequence[RunResult]) -> str:
    tasks: list[str] = []
    for r in runs:
        tasks += [t for t in r.tasks if t not in tasks and r.tasks[t].seconds]
    head = ["run"] + tasks + ["total s", "prompt tok/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        if not any(r.tasks[t].seconds for t in r.tasks):
            continue
        secs = sum(x.seconds for x in r.tasks.values())
        toks = sum(x.prompt_tokens for x in r.tasks.values())
        lines.append("| " + " | ".join(
            [r.label] + [f"{r.tasks[t].seconds:.1f}" if t in r.tasks else "" for t in tasks]
            + [f"{secs:.1f}", f"{toks / max(secs, 1e-9):.0f}"]) + " |")
    return "\n".join(lines)


def results_json(runs: Sequence[RunResult], meta: dict[str, Any],
                 with_examples: bool = True) -> bytes:
    payload = {
        **meta,
        "interval": INTERVAL,
        "runs": {r.label: {"layers": r.layers,
                           "tasks": {t: msgspec.to_builtins(x) for t, x in r.tasks.items()},
                           "averages": msgspec.to_builtins(averages(r))} for r in runs},
    }
    if with_examples:
        payload["examples"] = {r.label: {t: msgspec.to_builtins(v) for t, v in r.examples.items()}
                               for r in runs if r.examples}
    return msgspec.json.encode(payload)


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0
