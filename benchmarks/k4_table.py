"""The k = 4 accuracy table (BENCHMARKS.md: accuracy tables at k = 7 and k = 4).

The k = 4 pool is the first four removals of the same greedy runs (`prefix_pools["4"]`
of `vllm_pudding/pools/smollm2_135m_k7.json`); SLEB and ShortGPT at k = 4 are the first
four of their k = 7 orders (`benchmarks/results/eval/baselines_k7.json`: SLEB removes
17, 18, 16, 15; ShortGPT's four lowest block influences are 14, 17, 13, 15). All run as
labelled extra sets of one eval on the base model (the dense row is the base itself):

    .venv/bin/python -m vllm_pudding.eval --model <base model dir> --tasks all --n 200 \\
        --sets none --extra-sets '{"k4set0": [7, 18, 19, 26], ..., "sleb": [15, 16, 17, 18],
        "shortgpt": [13, 14, 15, 17]}' --out benchmarks/results/eval/k4/k4_n200.json
    .venv/bin/python benchmarks/k4_table.py benchmarks/results/eval/k4/k4_n200.json \\
        > benchmarks/results/eval/k4/k4_n200.md

This adds what the eval CLI adds only for a pudding dir's own sets: the oracle rows over
the ten k = 4 pool sets (`oracle-task`: the best set per task chosen on these same rows,
an upper bound for a task router; `oracle-example`), and paired differences (bootstrap
over examples) of the best pool set against SLEB and ShortGPT.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vllm_pudding.data.tasks import CALIBRATION_TASKS
from vllm_pudding.eval.paired import paired_difference
from vllm_pudding.eval.run import averages, markdown_table, oracle_rows
from vllm_pudding.router.report import load_runs

POOL_PREFIX = "k4set"


def main(path: str) -> None:
    runs, meta = load_runs([Path(path)])
    pool = [r for r in runs if r.label.startswith(POOL_PREFIX)]
    rows = runs + oracle_rows(pool, prefix=POOL_PREFIX)
    print(markdown_table(rows))
    by_label = {r.label: r for r in runs}
    best = max(pool, key=lambda r: averages(r)["avg6"].value)
    print(f"\nn = {meta.get('n')} per task (a seeded sample of each task's evaluation split, "
          f"seed {meta.get('seed')}), {meta.get('dtype')}. Best pool set by avg6: {best.label} "
          f"{100 * averages(best)['avg6'].value:.1f}.")
    for other in ("sleb", "shortgpt", "dense"):
        if other in by_label:
            mean, low, high = paired_difference(best, by_label[other], CALIBRATION_TASKS)
            print(f"- {best.label} minus {other}, avg6, paired 95% bootstrap over examples: "
                  f"{100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]")


if __name__ == "__main__":
    main(sys.argv[1])
