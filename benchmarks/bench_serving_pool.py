"""Mixed-set decode on serving-aware pools (issue 5), against one set and the full pool.

A serving-aware pool is a subset of the calibrated pool whose sets share a core of c
omitted layers (`python -m vllm_pudding.search.serving_pool --build-dirs` chooses them
and this script builds their pudding dirs). A batch mixing its sets keeps at most L - c layers, so
mixed decode is bounded by (L-k)/(L-c) of one-set speed instead of (L-k)/L.

Same protocol as bench_engine.py (harness.py): the seeded decode workload (16 requests x
32 prompt tokens, 128 output tokens) and the prefill workload (32 x 256, 1 token), every
config timed in each repetition, alternating order. Configs: "one set" (full pool dir,
set 0 for all), "mixed" (full pool, requests spread over its 10 sets), and per serving
dir "core<c> mixed" (requests spread over its sets) and "core<c> one set".

    .venv/bin/python benchmarks/bench_serving_pool.py --reps 5 \\
        --pools benchmarks/results/eval/serving_pools.json \\
        --out benchmarks/results/serving_pools_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from harness import (SETTINGS, alternate, machine_info, make_engine, prepare,  # noqa: E402
                     ratio_stats)
from workloads import protocol_cases  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def spread_over(n_sets: int):
    return lambda n: [i % n_sets for i in range(n)]


def run(pools: list[dict], full: dict, reps: int, seed: int) -> dict:
    setup = prepare()
    engines = {"pudding": make_engine(setup.pudding_dir)}
    cfg = {"one set": ("pudding", lambda n: [0] * n),
           "mixed": ("pudding", spread_over(len(setup.pool.omission_sets)))}
    pairs = {"mixed vs one set": ("one set", "mixed")}
    bounds = {"mixed": (setup.num_layers - setup.pool.k) / setup.num_layers}
    from vllm_pudding.default_model import cache_dir
    from vllm_pudding.search.serving_pool import build_serving_dir

    for p in pools:
        name = f"core{p['core']}"
        pdir = build_serving_dir(setup.pudding_dir, tuple(p["sets"]),
                                 cache_dir() / "pudding" / f"serving-{name}")
        engines[name] = make_engine(pdir)
        cfg[f"{name} one set"] = (name, lambda n: [0] * n)
        cfg[f"{name} mixed"] = (name, spread_over(len(p["sets"])))
        pairs[f"{name} mixed vs one set"] = ("one set", f"{name} mixed")
        pairs[f"{name} one set vs one set"] = ("one set", f"{name} one set")
        bounds[f"{name} mixed"] = p["decode_bound_vs_one_set"]
    times = alternate(engines, cfg, protocol_cases(setup.tokenizer, seed), reps)
    return {"times_s": times, "ratios": ratio_stats(times, pairs), "bounds_vs_one_set": bounds,
            "pools": pools, "full_pool": full, "reps": reps, "seed": seed, "settings": SETTINGS,
            "machine": machine_info()}


def markdown(result: dict) -> str:
    lines = ["| pool | sets | shared core | decode: mixed / one set (median, min-max) | bound "
             "| prefill: mixed / one set | validation avg6 |", "|---|---|---|---|---|---|---|"]
    r = result["ratios"]
    full = result["full_pool"]
    rows = [("full pool", full["sets"], full["shared_core"], "mixed vs one set", "mixed",
             full["val_avg6_fmt"])]
    rows += [(f"core {p['core']}", p["sets"], p["shared_core"], f"core{p['core']} mixed vs one set",
              f"core{p['core']} mixed", p["val_avg6_fmt"]) for p in result["pools"]]
    for label, sets, core, key, bkey, acc in rows:
        dec, pre = r[f"{key}, decode"], r[f"{key}, prefill"]
        lines.append(f"| {label} | {sets} | {core} | {dec['median']:.3f} ({dec['min']:.3f}-"
                     f"{dec['max']:.3f}) | {result['bounds_vs_one_set'][bkey]:.3f} | "
                     f"{pre['median']:.3f} | {acc} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pools", type=Path, required=True,
                        help="serving_pool JSON (its rows' sets; their dirs are rebuilt)")
    parser.add_argument("--cores", default="3,6", help="core sizes to benchmark")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    wanted = {int(c) for c in args.cores.split(",")}
    all_rows = json.loads(args.pools.read_text())["rows"]
    full = next(p for p in all_rows if p["label"] == "full pool")
    rows = [p for p in all_rows if p["label"] != "full pool" and p["core"] in wanted]
    result = run(rows, full, args.reps, args.seed)
    args.out.write_text(json.dumps(result, indent=1))
    text = markdown(result)
    args.out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
