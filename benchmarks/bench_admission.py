"""Omission-aware admission under saturation (issue 5): FCFS vs `PUDDING_ADMISSION=omission`.

A saturating decode workload: more requests than `max_num_seqs` (16), spread evenly over
the pool's sets, each 32 prompt tokens and 64 output tokens (ignore eos). When a slot
frees, FCFS admits the next request in arrival order, so every step mixes ~all sets;
omission-aware admission admits the waiting request whose set keeps the fewest layers
beyond the running batch's (patches/omission_admission.py). Configs, all on the
default pudding dir: "one set" (set 0 for every request, FCFS: the ceiling), "mixed
fcfs", and "mixed omission" once per aging bound (`--max-waits` in seconds,
`--max-bypasses` in later arrivals admitted first). Same seeded token
ids, alternated repetitions (harness.py).
Besides throughput, each request's latency (all arrive at once, so latency = when it
ends) gives p50 / p90 / p99 / max per config, and per set: the price of reordering is
paid by the sets admitted last, bounded by the aging rule.

    .venv/bin/python benchmarks/bench_admission.py --reps 3 \\
        --out benchmarks/results/admission.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from harness import (KV_BYTES, MAX_MODEL_LEN, configs, drive, machine_info,  # noqa: E402
                     percentile, prepare, ratio_stats, spread)
from workloads import workload_tokens  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
MAX_NUM_SEQS = 16


def engine(path: Path, admission: str, max_wait_s: float = 10.0, max_bypass: int | None = None):
    """An engine whose core process reads PUDDING_ADMISSION=`admission`,
    PUDDING_ADMISSION_MAX_WAIT_S=`max_wait_s` and PUDDING_ADMISSION_MAX_BYPASS (inherited env)."""
    from vllm import LLM

    env = {"PUDDING_ADMISSION": admission, "PUDDING_ADMISSION_MAX_WAIT_S": str(max_wait_s)}
    if max_bypass is not None:
        env["PUDDING_ADMISSION_MAX_BYPASS"] = str(max_bypass)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return LLM(model=str(path), dtype="bfloat16", max_model_len=MAX_MODEL_LEN,
                   enforce_eager=True, kv_cache_memory_bytes=KV_BYTES, seed=0,
                   enable_prefix_caching=False, max_num_seqs=MAX_NUM_SEQS)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


def latency(finish_s: list[float], set_ids: list[int]) -> dict:
    """Percentiles of request latency, and each set's median latency."""
    by_set = {}
    for t, s in zip(finish_s, set_ids):
        by_set.setdefault(s, []).append(t)
    return {"p50": percentile(finish_s, 0.5), "p90": percentile(finish_s, 0.9),
            "p99": percentile(finish_s, 0.99), "max": max(finish_s),
            "set_median": {str(s): statistics.median(v) for s, v in sorted(by_set.items())}}


def timed_runs(engines: dict, cfg: dict, prompts, out: int, reps: int) -> tuple[dict, dict]:
    """Alternated repetitions of every config: seconds and latency summaries."""
    for eng, sets in cfg.values():  # warm-up
        drive(engines[eng], prompts[:4], out, sets(4))
    times = {name: [] for name in cfg}
    lat = {name: [] for name in cfg}
    for rep in range(reps):
        for name in (list(cfg) if rep % 2 == 0 else list(reversed(cfg))):
            eng, sets = cfg[name]
            set_ids = sets(len(prompts))
            result = drive(engines[eng], prompts, out, set_ids)
            times[name].append(result.seconds)
            lat[name].append(latency(result.finish_s, set_ids))
        print(f"rep {rep + 1}/{reps}: " + ", ".join(
            f"{c} {times[c][-1]:.1f}s p99 {lat[c][-1]['p99']:.1f}s" for c in cfg), flush=True)
    return times, lat


def latency_summary(lat: dict) -> dict:
    """Per config: median and spread over reps of each percentile, and of the slowest
    set's median latency over the fastest set's (1.0 = every set served alike)."""
    out = {}
    for name, runs in lat.items():
        row = {q: spread([r[q] for r in runs]) for q in ("p50", "p90", "p99", "max")}
        row["set_spread"] = spread([max(r["set_median"].values()) / min(r["set_median"].values())
                                    for r in runs])
        out[name] = row
    return out


def run(num: int, reps: int, seed: int, max_waits: list[float],
        max_bypasses: list[int] = ()) -> dict:
    setup = prepare()
    n_sets = len(setup.pool.omission_sets)
    engines = {"fcfs": engine(setup.pudding_dir, "fcfs")}
    base = configs(n_sets)
    one_set, mixed = base["one set"][1], base["mixed"][1]
    cfg = {"one set": ("fcfs", one_set), "mixed fcfs": ("fcfs", mixed)}
    pairs = {"mixed fcfs vs one set": ("one set", "mixed fcfs")}
    bounds = [(f"mixed omission, max wait {w:g}s", w, None) for w in max_waits] + [
        (f"mixed omission, max bypass {b}", 10.0, b) for b in max_bypasses]
    for name, wait, bypass in bounds:
        engines[name] = engine(setup.pudding_dir, "omission", wait, bypass)
        cfg[name] = (name, mixed)
        pairs[f"{name} vs one set"] = ("one set", name)
        pairs[f"{name} vs mixed fcfs"] = ("mixed fcfs", name)
    prompts = workload_tokens(setup.tokenizer, num, 32, seed)
    times, lat = timed_runs(engines, cfg, prompts, 64, reps)
    return {"times_s": {"saturated decode": times},
            "ratios": ratio_stats({"saturated decode": times}, pairs),
            "latency_s": latency_summary(lat), "latency_per_rep": lat, "max_waits_s": max_waits,
            "max_bypasses": list(max_bypasses),
            "requests": num, "prompt": 32, "out": 64, "max_num_seqs": MAX_NUM_SEQS,
            "reps": reps, "seed": seed, "machine": machine_info()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=160)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-waits", default="10,30",
                        help="comma-separated PUDDING_ADMISSION_MAX_WAIT_S values, one "
                        "omission-aware engine each")
    parser.add_argument("--max-bypasses", default="",
                        help="comma-separated PUDDING_ADMISSION_MAX_BYPASS values (with the "
                        "10 s wait bound), one omission-aware engine each")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = run(args.num, args.reps, args.seed,
                 [float(x) for x in args.max_waits.split(",") if x],
                 [int(x) for x in args.max_bypasses.split(",") if x])
    args.out.write_text(json.dumps(result, indent=1))
    for label, r in result["ratios"].items():
        print(f"{label}: {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})")
    for name, row in result["latency_s"].items():
        print(f"{name}: latency p50 {row['p50']['median']:.1f}s, p90 {row['p90']['median']:.1f}s, "
              f"p99 {row['p99']['median']:.1f}s, max {row['max']['median']:.1f}s; slowest / "
              f"fastest set median {row['set_spread']['median']:.2f}")


if __name__ == "__main__":
    main()
