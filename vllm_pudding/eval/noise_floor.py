"""How much of the per-example oracle is signal a router could learn, and how much is noise.

    python -m vllm_pudding.eval.noise_floor --pudding-dir $(pudding default-dir) \\
        --results benchmarks/results/eval/calibrated_k7_val_a.json.gz \\
                  benchmarks/results/eval/calibrated_k7_val_b.json.gz \\
        --labels benchmarks/results/eval/labels_train640.json.gz \\
        --out benchmarks/results/eval/noise_floor_k7

Why: the example oracle (each validation example under any set that gets it right) sits
35 points above every router, which looks like headroom. But with a few sets of similar
accuracy that err partly independently, some set is right on most examples by chance,
and no router can know which. Three numbers per task separate the two:
- *observed*: the example oracle among the routable sets;
- *independent*: what the oracle would be if each set erred independently at its own
  accuracy (1 - prod(1 - acc_s)): the part chance alone explains;
- *same-errors*: the best set's accuracy (sets that all err on the same examples).
Observed near *independent* means the per-example differences between sets behave
like coin flips: they are not a property of the prompt a router could read.

And on the train label rows, a bootstrap over rows: how often the task router (best
routable set per task) picks each set, i.e. whether even the task-level choice is
determined by the labels, and the spread of that choice's validation accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from vllm_pudding.data.tasks import CALIBRATION_TASKS


def oracle_rows(correct: np.ndarray) -> dict[str, float]:
    """correct [n, sets] bool -> observed, independent and same-errors oracles."""
    acc = correct.mean(0)
    return {"observed": float(correct.any(1).mean()),
            "independent": float(1.0 - np.prod(1.0 - acc)),
            "same_errors": float(acc.max()),
            "mean_pairwise_agreement": pairwise_agreement(correct),
            "chance_pairwise_agreement": chance_agreement(acc)}


def pairwise_agreement(correct: np.ndarray) -> float:
    """Mean over set pairs of the fraction of examples both get right or both wrong."""
    s = correct.shape[1]
    vals = [float((correct[:, a] == correct[:, b]).mean())
            for a in range(s) for b in range(a + 1, s)]
    return float(np.mean(vals))


def chance_agreement(acc: np.ndarray) -> float:
    """The same agreement if the sets erred independently at their accuracies."""
    s = len(acc)
    vals = [acc[a] * acc[b] + (1 - acc[a]) * (1 - acc[b])
            for a in range(s) for b in range(a + 1, s)]
    return float(np.mean(vals))


def task_choice_bootstrap(train_correct: np.ndarray, val_acc: np.ndarray, allowed: np.ndarray,
                          reps: int = 1000, seed: int = 0) -> dict:
    """Resample the train rows; per resample the best allowed set. Returns how often each
    set wins and the 2.5/50/97.5 percentiles of the chosen set's validation accuracy."""
    rng = np.random.default_rng(seed)
    n = len(train_correct)
    picks = np.empty(reps, dtype=int)
    for i in range(reps):
        rows = train_correct[rng.integers(0, n, n)][:, allowed]
        picks[i] = allowed[rows.mean(0).argmax()]
    wins = {int(s): float((picks == s).mean()) for s in np.unique(picks)}
    lo, mid, hi = np.percentile(val_acc[picks], [2.5, 50, 97.5])
    return {"wins": wins, "val_acc": [float(lo), float(mid), float(hi)], "reps": reps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vllm_pudding.eval.noise_floor",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pudding-dir", required=True)
    p.add_argument("--results", nargs="+", required=True, help="validation eval JSONs")
    p.add_argument("--labels", nargs="+", required=True, help="train label JSONs")
    p.add_argument("--out", required=True, help="output path stem (.md, .json)")
    args = p.parse_args(argv)

    from vllm_pudding.artifact import load_pudding_dir
    from vllm_pudding.router.labels import load_tables

    pool = load_pudding_dir(Path(args.pudding_dir))
    num_sets = len(pool.omission_sets)
    allowed = np.array(pool.routable_sets or range(num_sets))
    val = load_tables([Path(x) for x in args.results], num_sets)
    train = load_tables([Path(x) for x in args.labels], num_sets)
    out = {"routable_sets": allowed.tolist(), "tasks": {}}
    for task in CALIBRATION_TASKS:
        if task not in val or task not in train:
            continue
        vc = val[task].correct
        row = {"n_val": len(vc), "n_train": len(train[task].correct),
               "routable": oracle_rows(vc[:, allowed]), "all_sets": oracle_rows(vc),
               "task_choice": task_choice_bootstrap(train[task].correct, vc.mean(0), allowed)}
        out["tasks"][task] = row
    text = render(out)
    stem = Path(args.out)
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1))
    stem.with_suffix(".md").write_text(text)
    print(text)
    return 0


def render(out: dict) -> str:
    lines = [f"Validation example oracle among the routable sets {out['routable_sets']} "
             "(percent): observed, if the sets erred independently, if they erred on the "
             "same examples; agreement = share of examples two sets get both right or both "
             "wrong (mean over pairs), observed vs chance.", "",
             "| task | n val | observed oracle | independent | same errors | agreement | "
             "chance agreement | task-router picks (bootstrap over n train rows) | "
             "its validation acc 2.5/50/97.5 |", "|" + "---|" * 9]
    for task, r in out["tasks"].items():
        o, c = r["routable"], r["task_choice"]
        wins = ", ".join(f"set{s} {100 * w:.0f}%" for s, w in
                         sorted(c["wins"].items(), key=lambda kv: -kv[1]))
        lines.append(f"| {task} | {r['n_val']} | {100 * o['observed']:.1f} | "
                     f"{100 * o['independent']:.1f} | {100 * o['same_errors']:.1f} | "
                     f"{100 * o['mean_pairwise_agreement']:.1f} | "
                     f"{100 * o['chance_pairwise_agreement']:.1f} | {wins} (n={r['n_train']}) | "
                     + "/".join(f"{100 * v:.1f}" for v in c["val_acc"]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
