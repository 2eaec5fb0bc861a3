"""Omission-aware admission under saturation (issue 5): FCFS vs `PUDDING_ADMISSION=omission`.

A saturating decode workload: more requests than `max_num_seqs` (16), spread evenly over
the pool's sets, each 32 prompt tokens and 64 output tokens (ignore eos). When a slot
frees, FCFS admits the next request in arrival order, so every step mixes ~all sets;
omission-aware admission admits the waiting request whose set keeps the fewest layers
beyond the running batch's (patches/omission_admission.py). Configs, all on the
default pudding dir: "one set" (set 0 for every request, FCFS: the ceiling), "mixed
fcfs", "mixed omission". Same seeded token ids, alternated repetitions (harness.py).

    .venv/bin/python benchmarks/bench_admission.py --reps 3 \\
        --out benchmarks/results/admission.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from harness import (KV_BYTES, MAX_MODEL_LEN, alternate, machine_info, prepare,  # noqa: E402
                     ratio_stats)
from workloads import workload_tokens  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
MAX_NUM_SEQS = 16


def engine(path: Path, admission: str):
    """An engine whose core process reads PUDDING_ADMISSION=`admission` (inherited env)."""
    from vllm import LLM

    old = os.environ.get("PUDDING_ADMISSION")
    os.environ["PUDDING_ADMISSION"] = admission
    try:
        return LLM(model=str(path), dtype="bfloat16", max_model_len=MAX_MODEL_LEN,
                   enforce_eager=True, kv_cache_memory_bytes=KV_BYTES, seed=0,
                   enable_prefix_caching=False, max_num_seqs=MAX_NUM_SEQS)
    finally:
        if old is None:
            os.environ.pop("PUDDING_ADMISSION")
        else:
            os.environ["PUDDING_ADMISSION"] = old


def run(num: int, reps: int, seed: int) -> dict:
    setup = prepare()
    n_sets = len(setup.pool.omission_sets)
    engines = {"fcfs": engine(setup.pudding_dir, "fcfs"),
               "omission": engine(setup.pudding_dir, "omission")}
    cfg = {"one set": ("fcfs", lambda n: [0] * n),
           "mixed fcfs": ("fcfs", lambda n: [i % n_sets for i in range(n)]),
           "mixed omission": ("omission", lambda n: [i % n_sets for i in range(n)])}
    cases = {"saturated decode": (workload_tokens(setup.tokenizer, num, 32, seed), 64)}
    times = alternate(engines, cfg, cases, reps)
    pairs = {"mixed fcfs vs one set": ("one set", "mixed fcfs"),
             "mixed omission vs one set": ("one set", "mixed omission"),
             "mixed omission vs mixed fcfs": ("mixed fcfs", "mixed omission")}
    return {"times_s": times, "ratios": ratio_stats(times, pairs), "requests": num,
            "prompt": 32, "out": 64, "max_num_seqs": MAX_NUM_SEQS, "reps": reps, "seed": seed,
            "machine": machine_info()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=160)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = run(args.num, args.reps, args.seed)
    args.out.write_text(json.dumps(result, indent=1))
    for label, r in result["ratios"].items():
        print(f"{label}: {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})")


if __name__ == "__main__":
    main()
