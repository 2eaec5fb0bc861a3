"""A/B speed of PuDDing against dense and statically pruned vLLM, in one run.

Protocol (../shared/BENCHMARKS.md): default model (SmolLM2-135M-Instruct, 30 layers),
the default pool's k = 7 sets; engines dense (stock vLLM on the base), static (stock
vLLM on the base with set 0's layers physically removed: the ceiling), PuDDing with
set 0 for every request ("one set"), PuDDing with requests spread evenly over all
pool sets ("mixed"). Same engine settings for all (bf16, enforce_eager). Workloads
are token ids from real validation prompts of the six tasks, seeded:
  prefill: 32 requests x 256 prompt tokens, 1 output token;
  decode:  16 requests x 32 prompt tokens, 128 output tokens (ignore eos).
Each repetition times every engine on the same workload, alternating; the report
gives the median and min-max spread of each ratio over the repetitions.

The workloads live in workloads.py, the engines, the alternated timing loop and the
ratio statistics in harness.py; bench_report.py runs these same two workloads plus the
rest of BENCHMARKS.md (latency table, serving mix, weights, router) in one report.

Command (about 10 minutes on 2 cores)::

    .venv/bin/python benchmarks/bench_engine.py --reps 5 --out benchmarks/results/engine.json

Another model: ``--model <pudding dir>`` (its base model is "dense", its set 0 "static").
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from harness import (
    SETTINGS, alternate, configs, kv_tokens, machine_info, make_engines, prepare, ratio_stats,
)
from workloads import DECODE, PREFILL, protocol_cases

TARGETS = {
    "one set vs static, prefill": 0.95,
    "one set vs static, decode": 0.95,
    "one set vs dense, prefill": 1.22,
    "one set vs dense, decode": 1.18,
    "mixed vs one set, prefill": 0.95,
}
PAIRS = {"one set vs static": ("static", "one set"), "one set vs dense": ("dense", "one set"),
         "mixed vs one set": ("one set", "mixed"), "mixed vs dense": ("dense", "mixed"),
         "static vs dense": ("dense", "static")}


def run(reps: int, seed: int, pudding_dir: Path | None = None) -> dict:
    setup = prepare(pudding_dir)
    engines = make_engines(setup)
    times = alternate(engines, configs(len(setup.pool.omission_sets)),
                      protocol_cases(setup.tokenizer, seed), reps)
    return {
        "times_s": times,
        "ratios": ratios(times),
        "kv_tokens": {name: kv_tokens(llm) for name, llm in engines.items()},
        "kv_block_size": engines["dense"].llm_engine.vllm_config.cache_config.block_size,
        "mixed_decode_bound_vs_dense": setup.num_layers / union_size(setup),
        "mixed_decode_bound_vs_one_set": (setup.num_layers - setup.pool.k) / union_size(setup),
        "pool": setup.pool.omission_sets, "provisional_pool": setup.pool.provisional,
        "model": str(setup.base), "pudding_dir": str(setup.pudding_dir),
        "num_layers": setup.num_layers, "k": setup.pool.k, "reps": reps, "seed": seed,
        "workloads": {"prefill": PREFILL, "decode": DECODE},
        "settings": SETTINGS,
        "machine": machine_info(),
    }


def union_size(setup) -> int:
    """Layers kept by at least one pool set: what a step mixing all sets must run."""
    return len(set(range(setup.num_layers)) - setup.pool.omitted_by_all())


def ratios(times: dict) -> dict:
    """Speed ratios per repetition (time of the slower reference / time of the subject)."""
    return ratio_stats(times, PAIRS)


def phase(case: str) -> str:
    """'prefill' or 'decode' for the cases the targets speak of ('prompt P gen N' decodes)."""
    return "decode" if case.startswith(("decode", "prompt")) else case.split(" ")[0]


def target_value(label: str) -> float | None:
    """The BENCHMARKS.md target of '<pair>, <case>', by the case's phase; None = none."""
    pair, case = label.rsplit(", ", 1)
    return TARGETS.get(f"{pair}, {phase(case)}")


def bound_value(label: str, result: dict) -> float | None:
    """Mixed-set decode is reported against its kept-layer union bound, not a target."""
    return {"mixed vs dense, decode": result.get("mixed_decode_bound_vs_dense"),
            "mixed vs one set, decode": result.get("mixed_decode_bound_vs_one_set")}.get(label)


def target_text(label: str, result: dict) -> str:
    """'>= target', or 'bound x' for mixed-set decode, or '' when neither applies."""
    bound, target = bound_value(label, result), target_value(label)
    if bound is not None:
        return f"bound {bound:.3f}"
    return f">= {target}" if target else ""


def ratio_table(ratios: dict, result: dict) -> list[str]:
    """Markdown rows: median, min-max and target of each ratio."""
    lines = [f"| ratio (n={result['reps']} alternated reps) | median | min-max | target |",
             "|---|---|---|---|"]
    for label, r in ratios.items():
        lines.append(f"| {label} | {r['median']:.3f} | {r['min']:.3f}-{r['max']:.3f} "
                     f"| {target_text(label, result)} |")
    return lines


def kv_lines(result: dict) -> list[str]:
    """KV capacity in tokens at the same KV memory, against the L / (L - k) target.

    vLLM counts whole blocks (floor of memory / block bytes), so even a static model
    with L - k layers lands a fraction of a block under L / (L - k) x dense; the target
    a block-granular cache can meet is floor(dense blocks x L / (L - k)) blocks.
    """
    kv = result["kv_tokens"]
    per_req = DECODE["prompt"] + DECODE["out"]
    scale = result["num_layers"] / (result["num_layers"] - result["k"])
    lines = [f"KV capacity (tokens, same 1 GiB): dense {kv['dense']}, static {kv['static']}, "
             f"pudding {kv['pudding']} ({kv['pudding'] / kv['dense']:.3f}x dense; "
             f"L / (L - k) = {scale:.3f})"]
    block = result.get("kv_block_size")
    if block:
        want = int(kv["dense"] // block * scale) * block
        lines.append(f"in whole {block}-token blocks: target >= {want} tokens "
                     f"(floor({kv['dense'] // block} x {scale:.3f}) blocks): "
                     f"{'met' if kv['pudding'] >= want else 'missed'}")
    return lines + [f"max concurrent {per_req}-token requests: dense {kv['dense'] // per_req}, "
                    f"pudding {kv['pudding'] // per_req}"]


def report(result: dict) -> str:
    return "\n".join(ratio_table(result["ratios"], result) + [""] + kv_lines(result))


def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine.json"))
    parser.add_argument("--model", type=Path, default=None,
                        help="pudding dir (default: the default one); its base is 'dense'")
    args = parser.parse_args()
    result = run(args.reps, args.seed, args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(report(result))


if __name__ == "__main__":
    main()
