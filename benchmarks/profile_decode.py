"""Where a decode step's time goes: dense vLLM (default, compiled) vs PuDDing one set
with compiled layers, on bench_dense_default.py's seeded decode workload.

Why: bench_dense_default.py gives the ratio (issue 16: one set compiled reaches ~1.11x
of dense default in decode against a 1.18x target, ~1.23x ideal with 23 of 30 layers
and the fixed LM head); this says which part of the step keeps it there. Both engines
run in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0: engine core and model runner
in-process, so one cProfile sees the scheduler, the runner, the model and the sampler),
one after the other on the same prompts; each first runs the workload once unprofiled
(warm-up, and the wall time quoted), then once under cProfile. Buckets are cumulative
times of named functions (they nest: "model forward" holds "decoder layers").

    taskset -c 0 .venv/bin/python benchmarks/profile_decode.py \\
        --out benchmarks/results/profile_decode.json
    taskset -c 0 .venv/bin/python benchmarks/profile_decode.py --eager --model <pudding dir> \\
        --out benchmarks/results/profile_decode_qwen25.json   # bench_engine's dense/static/one set

cProfile inflates Python-heavy code, so compare the buckets between the two engines, not
with the unprofiled wall time. The torch profiler's op table (self CPU time per op, which
cProfile cannot split inside compiled code) of a third run, 32 output tokens, is kept as
`ops` in the JSON and printed.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import time
from pathlib import Path

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from bench_dense_default import default_engine  # noqa: E402
from harness import _requests, machine_info, prepare  # noqa: E402
from workloads import protocol_cases  # noqa: E402

# bucket -> (file suffix, function name): cumulative time of that function
BUCKETS = {
    "engine step": ("v1/engine/core.py", "step"),
    "schedule": ("v1/core/sched/scheduler.py", "schedule"),
    "update from output": ("v1/core/sched/scheduler.py", "update_from_output"),
    "execute model": ("v1/worker/gpu_model_runner.py", "execute_model"),
    "prepare inputs": ("v1/worker/gpu_model_runner.py", "_prepare_inputs"),
    "model forward (dense)": ("model_executor/models/llama.py", "forward"),
    "model forward (dense qwen2)": ("model_executor/models/qwen2.py", "forward"),
    "logits (LM head)": ("model_executor/layers/logits_processor.py", "forward"),
    "model forward (pudding)": ("vllm_pudding/models/common.py", "run_layers"),
    "decoder layers (pudding)": ("vllm_pudding/depth.py", "run"),
    "compiled layer call": ("vllm_pudding/layer_compile.py", "__call__"),
    "pudding step plan": ("vllm_pudding/depth.py", "end_step"),
    "sample": ("v1/worker/gpu_model_runner.py", "_sample"),
    "output processing": ("v1/engine/output_processor.py", "process_outputs"),
}


def buckets(stats: pstats.Stats) -> dict:
    found: dict[str, dict] = {}
    for (path, _, func), (cc, nc, _, ct, _) in stats.stats.items():
        for name, (suffix, want) in BUCKETS.items():
            if func == want and path.endswith(suffix):
                row = found.setdefault(name, {"calls": 0, "cum_s": 0.0})
                row["calls"] += nc
                row["cum_s"] = max(row["cum_s"], ct)  # recursion: cumtime already nests
    return found


def top(stats: pstats.Stats, n: int) -> list:
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    return [{"func": f"{Path(p).name}:{line}:{func}", "calls": v[1], "tottime_s": v[2],
             "cumtime_s": v[3]} for (p, line, func), v in rows]


def profile(llm, prompts, max_tokens: int, set_ids) -> dict:
    reqs, params = _requests(prompts, max_tokens, set_ids)
    t0 = time.perf_counter()
    llm.generate(reqs, params, use_tqdm=False)
    wall = time.perf_counter() - t0
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    llm.generate(reqs, params, use_tqdm=False)
    prof.disable()
    profiled = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    return {"wall_s": wall, "profiled_s": profiled, "buckets": buckets(stats),
            "top_tottime": top(stats, 25), "ops": op_table(llm, prompts, set_ids)}


def op_table(llm, prompts, set_ids, max_tokens: int = 32, rows: int = 20) -> dict:
    """Self CPU time per op under torch.profiler (32 output tokens)."""
    import torch

    reqs, params = _requests(prompts, max_tokens, set_ids)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        llm.generate(reqs, params, use_tqdm=False)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return {"max_tokens": max_tokens,
            "self_cpu_total_s": sum(e.self_cpu_time_total for e in events) / 1e6,
            "top": [{"op": e.key[:80], "calls": e.count, "self_cpu_s": e.self_cpu_time_total / 1e6}
                    for e in events[:rows]]}


def engines(setup, eager: bool) -> dict:
    """name -> (engine factory, set id): stock vLLM engines get no set."""
    from harness import make_engine

    if eager:  # bench_engine.py's engines (enforce_eager), its dense/static/one-set configs
        return {"dense": (lambda: make_engine(setup.base), None),
                "static": (lambda: make_engine(setup.static_dir), None),
                "one set": (lambda: make_engine(setup.pudding_dir), 0)}
    return {"dense default": (lambda: default_engine(setup.base), None),
            "one set compiled": (lambda: default_engine(
                setup.pudding_dir, additional_config={"pudding_compile_layers": True}), 0)}


def report(name: str, r: dict) -> None:
    print(f"{name}: wall {r['wall_s']:.2f} s, profiled {r['profiled_s']:.2f} s")
    for b, row in sorted(r["buckets"].items(), key=lambda kv: -kv[1]["cum_s"]):
        print(f"  {b:28s} {row['cum_s']:7.2f} s  ({row['calls']} calls)")
    ops = r["ops"]
    print(f"  ops, {ops['max_tokens']} tokens: self CPU {ops['self_cpu_total_s']:.3f} s")
    for row in ops["top"][:12]:
        print(f"    {row['op'][:60]:60s} {row['calls']:6d} {row['self_cpu_s']:7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=None,
                        help="pudding dir (default: the default one); static = set 0 removed")
    parser.add_argument("--eager", action="store_true",
                        help="bench_engine.py's eager engines: dense, static, one set")
    args = parser.parse_args()
    setup = prepare(args.model)
    case = protocol_cases(setup.tokenizer, args.seed)["decode"]
    result = {"workload": {"prompts": len(case.prompts), "prompt_tokens": len(case.prompts[0]),
                           "max_tokens": case.out}, "model": str(setup.base),
              "machine": machine_info()}
    for name, (make, set_id) in engines(setup, args.eager).items():
        llm = make()
        result[name] = profile(llm, case.prompts, case.out, [set_id] * len(case.prompts))
        llm.llm_engine.engine_core.shutdown()
        del llm
        report(name, result[name])
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
