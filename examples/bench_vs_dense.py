"""A small A/B: the default pudding model against dense vLLM on the same seeded workload.

Both engines run with the same settings and alternate on identical token-id prompts (the
harness of `benchmarks/`: `harness.make_engine`, `harness.alternate`, `workloads`): a
prefill case (N prompts of L tokens, 1 output token) and a decode case (N prompts of 16
tokens, M generated tokens each). PuDDing runs every request on set 0 ("one set") and
spread over every set of the pool ("mixed"). Printed: seconds per repetition and the
speed ratios over dense (median, min-max over the repetitions; >1 is faster than dense).

    .venv/bin/python examples/bench_vs_dense.py                        # ~3 min on 2 cores
    .venv/bin/python examples/bench_vs_dense.py --reps 5 --prompts 16 --max-tokens 64

Every engine runs eager (`enforce_eager=True`), the protocol of `benchmarks/`; the full
protocol and dense vLLM with its compiled defaults: `benchmarks/bench_report.py`,
`benchmarks/bench_dense_default.py` (README, Benchmarks).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="pudding model dir (default: the default pudding dir)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per case")
    parser.add_argument("--prompt-len", type=int, default=128, help="prefill prompt tokens")
    parser.add_argument("--max-tokens", type=int, default=32, help="decode tokens per prompt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # CPU vLLM needs a KV size

    from transformers import AutoTokenizer

    from harness import alternate, configs, make_engine, ratio_stats
    from vllm_pudding.artifact import base_model, load_pudding_dir
    from vllm_pudding.default_pudding import ensure_default_pudding_dir
    from workloads import Case, workload_tokens

    pudding_dir = Path(args.model) if args.model else ensure_default_pudding_dir()
    base = base_model(pudding_dir)  # dense: the checkpoint the pudding dir was built from
    pool = load_pudding_dir(pudding_dir)
    tok = AutoTokenizer.from_pretrained(pudding_dir)
    cases = {
        "prefill": Case(workload_tokens(tok, args.prompts, args.prompt_len, args.seed), 1),
        "decode": Case(workload_tokens(tok, args.prompts, 16, args.seed + 1), args.max_tokens),
    }
    engines = {"pudding": make_engine(pudding_dir), "dense": make_engine(base)}
    cfg = {k: v for k, v in configs(len(pool.omission_sets)).items() if k != "static"}
    times = alternate(engines, cfg, cases, args.reps)
    ratios = ratio_stats(times, {"one set vs dense": ("dense", "one set"),
                                 "mixed vs dense": ("dense", "mixed")})
    print(f"\n{pudding_dir}: {len(pool.omission_sets)} sets, k={pool.k}; "
          f"{args.reps} alternated reps, {args.prompts} prompts per case")
    for label, r in ratios.items():
        print(f"  {label:26s} {r['median']:.3f}  ({r['min']:.3f}-{r['max']:.3f})")


if __name__ == "__main__":
    main()
