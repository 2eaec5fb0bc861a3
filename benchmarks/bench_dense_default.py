"""Dense vLLM with its default settings, the figure a user compares against (BENCHMARKS.md).

The A/B report runs every engine with `enforce_eager=True` (PuDDing's per-row layer loop
cannot be captured by torch.compile); stock vLLM by default compiles its model
(torch.compile/inductor; on CPU there are no CUDA graphs). This run times, on the same
seeded prefill and decode workloads (harness.py, alternated): "dense default" (stock vLLM,
only dtype/KV/prefix-caching pinned as in the report), "dense eager", PuDDing "one set"
and "mixed" eager, and PuDDing with compiled layer bodies ("one set compiled", "mixed
compiled": no enforce_eager and `pudding_compile_layers`, vllm_pudding/layer_compile.py).

    .venv/bin/python benchmarks/bench_dense_default.py --reps 5 \\
        --out benchmarks/results/dense_default.json

`--only "dense default,one set compiled,mixed compiled"` times just those (and starts
only their engines): the compiled-layer figures in half the time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from harness import (KV_BYTES, MAX_MODEL_LEN, alternate, configs, machine_info,  # noqa: E402
                     make_engine, prepare, ratio_stats)
from workloads import protocol_cases  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def default_engine(path: Path, **kwargs):
    from vllm import LLM

    return LLM(model=str(path), dtype="bfloat16", max_model_len=MAX_MODEL_LEN,
               kv_cache_memory_bytes=KV_BYTES, seed=0, enable_prefix_caching=False, **kwargs)


def run(reps: int, seed: int, only: list[str] | None = None) -> dict:
    setup = prepare()
    base = configs(len(setup.pool.omission_sets))
    cfg = {"dense default": ("dense default", lambda n: [None] * n), "dense": base["dense"],
           "one set": base["one set"], "mixed": base["mixed"],
           "one set compiled": ("pudding compiled", base["one set"][1]),
           "mixed compiled": ("pudding compiled", base["mixed"][1])}
    if only:
        unknown = set(only) - set(cfg)
        if unknown:
            raise ValueError(f"--only: unknown {sorted(unknown)}; known: {', '.join(cfg)}")
        cfg = {name: cfg[name] for name in only}
    needed = {engine for engine, _ in cfg.values()}
    t0 = time.perf_counter()
    engines = {"dense default": default_engine(setup.base)}
    start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if "pudding compiled" in needed:
        engines["pudding compiled"] = default_engine(
            setup.pudding_dir, additional_config={"pudding_compile_layers": True})
    pudding_start_s = time.perf_counter() - t0
    if "dense" in needed:
        engines["dense"] = make_engine(setup.base)
    if "pudding" in needed:
        engines["pudding"] = make_engine(setup.pudding_dir)
    times = alternate(engines, cfg, protocol_cases(setup.tokenizer, seed), reps)
    pairs = {"dense eager vs dense default": ("dense default", "dense"),
             "one set vs dense default": ("dense default", "one set"),
             "mixed vs dense default": ("dense default", "mixed"),
             "one set vs dense eager": ("dense", "one set"),
             "one set compiled vs dense default": ("dense default", "one set compiled"),
             "mixed compiled vs dense default": ("dense default", "mixed compiled"),
             "one set compiled vs one set eager": ("one set", "one set compiled"),
             "mixed compiled vs one set compiled": ("one set compiled", "mixed compiled")}
    pairs = {k: (a, b) for k, (a, b) in pairs.items() if a in cfg and b in cfg}
    return {"times_s": times, "ratios": ratio_stats(times, pairs), "configs": list(cfg),
            "dense_default_start_s": start_s, "pudding_compiled_start_s": pudding_start_s,
            "reps": reps, "seed": seed,
            "compilation": str(engines["dense default"].llm_engine.vllm_config
                               .compilation_config.mode),
            "machine": machine_info()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", default="", help="comma list of configs to time")
    args = parser.parse_args()
    result = run(args.reps, args.seed, [c.strip() for c in args.only.split(",") if c.strip()])
    args.out.write_text(json.dumps(result, indent=1))
    print(f"dense default engine start: {result['dense_default_start_s']:.0f} s, "
          f"compilation {result['compilation']}; PuDDing compiled layers start: "
          f"{result['pudding_compiled_start_s']:.0f} s")
    for label, r in result["ratios"].items():
        print(f"{label}: {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})")


if __name__ == "__main__":
    main()
