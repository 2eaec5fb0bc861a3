"""The in-engine hidden router against its offline twin, and its cost, on validation prompts.

The hidden router's accuracy figures (`router.report`) route from HF fp32 features
of the prompt text. In the engine the same head reads the engine's own states (bf16
by default) on the first prefill chunk. This check sends every prompt through the
engine unpinned (one output token) and reports:
- agreement: the share of prompts whose in-engine set equals the offline decision
  (the routed accuracy in `router.report` holds exactly for the agreeing share);
- stability: the share of prompts routed to the same set in every routed pass. The
  engine starts stepping while `LLM.generate` is still adding requests, so which
  steps a prompt shares, and where the step's token budget cuts a prompt's first
  chunk, vary between passes; a prompt whose first chunk is cut short is routed on
  the tokens that chunk holds;
- overhead: wall time of the routed batch over the same batch pinned to the sets the
  engine chose (same layers run; the difference is pooling, the head, one re-plan),
  alternated over `--reps`, and the worker's own time in the routing step.

    python -m vllm_pudding.router.engine_check --n 200 \\
        --out benchmarks/results/eval/hidden_in_engine.json

`--pudding-dir` defaults to the default dir; its router must be the hidden kind.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # step_stats via apply_model

CALIB6 = ["arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "winogrande"]


def offline_sets(pdir: Path, texts: dict[str, list[str]]) -> dict[str, list[int]]:
    from vllm_pudding.artifact import base_model, load_pudding_dir
    from vllm_pudding.router.report import route_cached
    from vllm_pudding.router.runtime import Router
    from vllm_pudding.router.spec import load_spec

    pool = load_pudding_dir(pdir)
    rdir = pdir / pool.router.path
    # the served restriction too: the engine picks among routable_sets only
    router = Router(rdir, load_spec(rdir, pool.omission_sets), base_model(pdir),
                    routable=pool.routable_sets)
    return route_cached(router, texts)


def engine_sets(llm, texts: list[str], sets: list[int] | None = None) -> tuple[list[int], float]:
    from vllm import SamplingParams

    def params(s):
        return SamplingParams(max_tokens=1, temperature=0.0, detokenize=False,
                              extra_args=None if s is None else {"pudding_set": s})

    t0 = time.perf_counter()
    outs = llm.generate(texts, [params(None if sets is None else s) for s in
                                (sets or [None] * len(texts))], use_tqdm=False)
    return [o.pudding_set for o in outs], time.perf_counter() - t0


def run(pdir: Path, n: int, reps: int) -> dict:
    from vllm import LLM

    from vllm_pudding.data.tasks import validation_examples
    from vllm_pudding.depth import step_stats
    from vllm_pudding.router.labels import router_text

    texts = {t: [router_text(e) for e in validation_examples(t, n=n, seed=0)] for t in CALIB6}
    offline = offline_sets(pdir, texts)
    # No prefix caching: pinned repeats would hit the cache, routed requests never read it.
    llm = LLM(model=str(pdir), dtype="bfloat16", max_model_len=1024, enforce_eager=True,
              kv_cache_memory_bytes=1 << 30, seed=0, enable_prefix_caching=False)
    flat = [x for t in CALIB6 for x in texts[t]]
    engine_sets(llm, flat[:8])  # warm-up
    routed, _ = engine_sets(llm, flat)
    passes = [routed]
    times = {"routed": [], "pinned": []}
    before = llm.apply_model(step_stats)[0]
    for rep in range(reps):
        for name in (["routed", "pinned"] if rep % 2 == 0 else ["pinned", "routed"]):
            got, secs = engine_sets(llm, flat, None if name == "routed" else routed)
            if name == "routed":
                passes.append(got)
            times[name].append(secs)
    after = llm.apply_model(step_stats)[0]
    stable = sum(len(set(col)) == 1 for col in zip(*passes)) / len(flat)
    per_task, start = {}, 0
    for t in CALIB6:
        mine = routed[start:start + len(texts[t])]
        start += len(texts[t])
        per_task[t] = sum(a == b for a, b in zip(mine, offline[t])) / len(mine)
    ratios = [r / p for r, p in zip(times["routed"], times["pinned"])]
    route_s = after.get("route_seconds", 0.0) - before.get("route_seconds", 0.0)
    routed_rows = after.get("routed_rows", 0) - before.get("routed_rows", 0)
    return {"n_per_task": n, "prompts": len(flat), "agreement": per_task,
            "agreement_avg": statistics.mean(per_task.values()),
            "stable_across_passes": stable, "routed_passes": len(passes),
            "worker_route_ms_per_prompt": 1e3 * route_s / max(routed_rows, 1),
            "worker_route_share_of_routed_time": route_s / sum(times["routed"]),
            "routed_over_pinned": {"median": statistics.median(ratios), "min": min(ratios),
                                   "max": max(ratios)},
            "times_s": times, "sets_used": sorted(set(routed)), "pudding_dir": str(pdir)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vllm_pudding.router.engine_check",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pudding-dir", default=None)
    p.add_argument("--n", type=int, default=200, help="validation prompts per task")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.pudding_dir is None:
        from vllm_pudding.default_pudding import ensure_default_pudding_dir

        pdir = ensure_default_pudding_dir()
    else:
        pdir = Path(args.pudding_dir)
    result = run(pdir, args.n, args.reps)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
