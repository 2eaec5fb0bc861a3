"""The accuracy table of stored per-example scores, recomputed with today's metrics.

    python -m vllm_pudding.eval.table benchmarks/results/eval/provisional_pool_n200.json.gz

Reads `python -m vllm_pudding.eval --out` files (several merge by run label), recomputes
every run's metrics and the oracle rows from the per-example log-probs (no engine, no
re-scoring), and prints the markdown table `python -m vllm_pudding.eval` prints. Why: a
metric's definition can change after the scores were taken (acc_norm's divisor did,
issue 17); the stored log-probs are what the tables derive from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vllm_pudding.eval.table", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="eval JSONs (.json or .json.gz)")
    args = p.parse_args(argv)

    from vllm_pudding.eval.run import markdown_table, oracle_rows
    from vllm_pudding.router.report import load_runs

    runs, _ = load_runs([Path(x) for x in args.results])
    print(markdown_table(runs + oracle_rows(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
