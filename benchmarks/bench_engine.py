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

Command (about 10 minutes on 2 cores)::

    .venv/bin/python benchmarks/bench_engine.py --reps 5 --out benchmarks/results/engine.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

PREFILL = dict(num=32, prompt=256, out=1)
DECODE = dict(num=16, prompt=32, out=128)
TARGETS = {
    "one set vs static, prefill": 0.95,
    "one set vs static, decode": 0.95,
    "one set vs dense, prefill": 1.22,
    "one set vs dense, decode": 1.18,
    "mixed vs one set, prefill": 0.95,
}


def workload_tokens(tokenizer, num: int, length: int, seed: int) -> list[list[int]]:
    """`num` windows of `length` token ids from the six tasks' validation prompts."""
    from vllm_pudding.data.olmo import TASKS, validation_prompts

    rng = random.Random(seed)
    stream: list[int] = []
    for task in TASKS:
        texts = validation_prompts(task, limit=200)
        rng.shuffle(texts)
        stream += tokenizer("\n\n".join(texts[:60]))["input_ids"]
    starts = [rng.randrange(0, len(stream) - length) for _ in range(num)]
    return [stream[s:s + length] for s in starts]


def make_engine(path: Path):
    from vllm import LLM

    return LLM(model=str(path), dtype="bfloat16", max_model_len=1024, enforce_eager=True,
               kv_cache_memory_bytes=1 << 30, seed=0)


def timed(llm, prompts, max_tokens: int, set_ids) -> float:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = [SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                             detokenize=False,
                             extra_args=None if s is None else {"pudding_set": s})
              for s in set_ids]
    inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    start = time.perf_counter()
    llm.generate(inputs, params, use_tqdm=False)
    return time.perf_counter() - start


def kv_tokens(llm) -> int:
    cache = llm.llm_engine.vllm_config.cache_config
    return cache.num_gpu_blocks * cache.block_size


def run(reps: int, seed: int) -> dict:
    from transformers import AutoTokenizer

    from vllm_pudding.artifact import load_pudding_dir
    from vllm_pudding.default_model import ensure_default_model
    from vllm_pudding.default_pudding import ensure_default_pudding_dir
    from vllm_pudding.static import write_static_checkpoint

    base, pudding_dir = ensure_default_model(), ensure_default_pudding_dir()
    pool = load_pudding_dir(pudding_dir)
    num_layers = json.loads((base / "config.json").read_text())["num_hidden_layers"]
    static_dir = write_static_checkpoint(base, pool.omission_sets[0],
                                         Path(tempfile.mkdtemp()) / "static")
    tok = AutoTokenizer.from_pretrained(base)
    loads = {"prefill": (workload_tokens(tok, PREFILL["num"], PREFILL["prompt"], seed),
                         PREFILL["out"]),
             "decode": (workload_tokens(tok, DECODE["num"], DECODE["prompt"], seed + 1),
                        DECODE["out"])}
    engines = {"dense": make_engine(base), "static": make_engine(static_dir),
               "pudding": make_engine(pudding_dir)}
    num_sets = len(pool.omission_sets)
    configs = {  # name -> (engine, set id per request or None)
        "dense": ("dense", lambda n: [None] * n),
        "static": ("static", lambda n: [None] * n),
        "one set": ("pudding", lambda n: [0] * n),
        "mixed": ("pudding", lambda n: [i % num_sets for i in range(n)]),
    }
    times = {w: {c: [] for c in configs} for w in loads}
    for workload, (prompts, out) in loads.items():  # warm-up, untimed
        for name, (eng, sets) in configs.items():
            timed(engines[eng], prompts[:4], out, sets(4))
    for rep in range(reps):
        for workload, (prompts, out) in loads.items():
            order = list(configs) if rep % 2 == 0 else list(reversed(configs))
            for name in order:
                eng, sets = configs[name]
                times[workload][name].append(timed(engines[eng], prompts, out, sets(len(prompts))))
        print(f"rep {rep + 1}/{reps}: " + ", ".join(
            f"{w} {c} {times[w][c][-1]:.2f}s" for w in loads for c in configs), flush=True)
    union = len(set(range(num_layers)) - pool.omitted_by_all())
    return {
        "times_s": times,
        "ratios": ratios(times),
        "kv_tokens": {name: kv_tokens(llm) for name, llm in engines.items()},
        "mixed_decode_bound_vs_dense": num_layers / union,
        "pool": pool.omission_sets, "provisional_pool": pool.provisional,
        "num_layers": num_layers, "k": pool.k, "reps": reps, "seed": seed,
        "workloads": {"prefill": PREFILL, "decode": DECODE},
        "settings": "bf16, enforce_eager=True, kv_cache_memory_bytes=1GiB, vLLM defaults otherwise",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    }


def ratios(times: dict) -> dict:
    """Speed ratios per repetition (time of the slower reference / time of the subject)."""
    pairs = {"one set vs static": ("static", "one set"), "one set vs dense": ("dense", "one set"),
             "mixed vs one set": ("one set", "mixed"), "mixed vs dense": ("dense", "mixed"),
             "static vs dense": ("dense", "static")}
    out = {}
    for workload, by_config in times.items():
        for label, (ref, subject) in pairs.items():
            per_rep = [a / b for a, b in zip(by_config[ref], by_config[subject])]
            out[f"{label}, {workload}"] = {
                "median": statistics.median(per_rep), "min": min(per_rep), "max": max(per_rep)}
    return out


def report(result: dict) -> str:
    lines = [f"| ratio (n={result['reps']} alternated reps) | median | min-max | target |",
             "|---|---|---|---|"]
    for label, r in result["ratios"].items():
        target = TARGETS.get(label)
        if label == "mixed vs dense, decode":
            target_s = f"bound {result['mixed_decode_bound_vs_dense']:.2f}"
        else:
            target_s = f">= {target}" if target else ""
        lines.append(f"| {label} | {r['median']:.3f} | {r['min']:.3f}-{r['max']:.3f} | {target_s} |")
    kv = result["kv_tokens"]
    per_req = DECODE["prompt"] + DECODE["out"]
    lines.append(f"\nKV capacity (tokens, same 1 GiB): dense {kv['dense']}, static {kv['static']}, "
                 f"pudding {kv['pudding']} ({kv['pudding'] / kv['dense']:.3f}x dense; target "
                 f">= {result['num_layers'] / (result['num_layers'] - result['k']):.3f})")
    lines.append(f"max concurrent {per_req}-token requests: dense {kv['dense'] // per_req}, "
                 f"pudding {kv['pudding'] // per_req}")
    return "\n".join(lines)


def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engine.json"))
    args = parser.parse_args()
    result = run(args.reps, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(report(result))


if __name__ == "__main__":
    main()
