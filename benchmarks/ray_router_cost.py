"""What a routing worker costs per request, against a 256-token prefill on an engine replica.

A routing worker (vllm_pudding/serve_ray/routing.py) runs the dir's router before
dispatch; for the default dir's hidden router that is the embeddings, the prefix layers
every set keeps and the head, in HF transformers (router.hidden.PrefixEncoder, fp32, no KV;
it reads the first `max_tokens` prompt tokens). A replica would otherwise run those layers
inside its own prefill. Both sides here on the same core, alternated per repetition, with
the benchmark workloads' prompts (256 tokens from the six tasks' validation prompts):
  - router: `Router.route` of 1 prompt, and of a batch of 32 (per prompt), as the worker's
    `@serve.batch` call runs it;
  - prefill: the default pudding dir in vLLM (harness.make_engine: bf16, eager), 1 request
    of 256 tokens and 1 output token pinned to set 0, and a batch of 32 (per request).

    taskset -c 0 .venv/bin/python benchmarks/ray_router_cost.py --reps 5 \
        --out benchmarks/results/ray_router_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from harness import machine_info, make_engine, timed
from workloads import workload_tokens

PROMPT_TOKENS = 256
BATCH = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(
        map(str, sorted(os.sched_getaffinity(0)))))
    from transformers import AutoTokenizer

    from vllm_pudding.artifact import load_pudding_dir
    from vllm_pudding.default_pudding import ensure_default_pudding_dir
    from vllm_pudding.router.runtime import load_router

    pudding_dir = ensure_default_pudding_dir()
    pool = load_pudding_dir(pudding_dir)
    tokenizer = AutoTokenizer.from_pretrained(pudding_dir)
    prompts = workload_tokens(tokenizer, BATCH, PROMPT_TOKENS, seed=0)
    texts = [tokenizer.decode(p) for p in prompts]
    router = load_router(pudding_dir, pool)
    llm = make_engine(pudding_dir)
    router.route(texts[:2])  # warm-up both
    timed(llm, prompts[:2], 1, [0, 0])
    rows = {k: [] for k in ("router_1", "router_32", "prefill_1", "prefill_32")}
    for rep in range(args.reps):
        i = rep % BATCH
        start = time.perf_counter()
        router.route([texts[i]])
        rows["router_1"].append(time.perf_counter() - start)
        rows["prefill_1"].append(timed(llm, [prompts[i]], 1, [0]))
        start = time.perf_counter()
        router.route(texts)
        rows["router_32"].append((time.perf_counter() - start) / BATCH)
        rows["prefill_32"].append(timed(llm, prompts, 1, [0] * BATCH) / BATCH)
    ms = {k: {"median": statistics.median(v) * 1e3, "min": min(v) * 1e3, "max": max(v) * 1e3}
          for k, v in rows.items()}
    share = {b: [r / p for r, p in zip(rows[f"router_{b}"], rows[f"prefill_{b}"])]
             for b in ("1", "32")}
    result = {
        "what": "routing worker's router call per prompt vs a 256-token prefill per request "
                "(1 output token, set 0), same core, alternated",
        "router": {"kind": pool.router.kind if pool.router else None,
                   "prefix_layers": router.spec.prefix_layers,
                   "max_tokens_read": router.spec.max_tokens},
        "pudding_dir": str(pudding_dir), "reps": args.reps, "ms_per_request": ms,
        "router_share_of_prefill": {b: {"median": statistics.median(v), "min": min(v),
                                        "max": max(v)} for b, v in share.items()},
        "cores": sorted(os.sched_getaffinity(0)), "machine": machine_info(),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
