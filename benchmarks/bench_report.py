"""The benchmark report (issue 5): every workload of ../shared/BENCHMARKS.md in one run.

Why one run: ratios only compare when dense, static and PuDDing run in the same
process state, on the same seeded token ids, alternating (see harness.py). One
command starts the three engines once (dense stock vLLM on the base; static: stock
vLLM on the base with set 0's layers removed, the ceiling; PuDDing on the default
pudding dir) and measures, each with `--reps` alternated repetitions:

- prefill / decode throughput (bench_engine.py's workloads), configs dense, static,
  one set (set 0 for every request), mixed (requests spread evenly over all sets);
- the batch-1 latency table: prefill 128/256/512 prompt tokens (1 output token);
  prompt 128 generating 128/256/512 tokens (ignore eos); dense, static, one set;
- the serving mix: 256 whole validation prompts of the six tasks, 64 output tokens
  each, one `llm.generate` call; output and total tokens/s; all four configs;
- weights held by each engine (its live parameters, weights.py), KV capacity in
  tokens at the same 1 GiB, and mixed-set decode beside its union-of-kept-layers bound;
- router overhead: a text router's own wall time per prompt; for the hidden router
  (decided inside the engine) the routed request's time minus the same request pinned
  to the set the engine chose, alternated.

Full command. On this project's 2-core CPU machine, quiet, an estimate of about 25
minutes (not yet measured): 3 engine starts ~2 min; prefill/decode ~3 min (as in
bench_engine.py); latency table ~8 min (896 batch-1 decode steps x 3 engines x 5 reps,
plus a warm-up); serving mix ~6 min. Run it with nothing else on the cores; it sets
VLLM_ALLOW_INSECURE_SERIALIZATION=1 itself (weights are read through apply_model)::

    .venv/bin/python benchmarks/bench_report.py \\
        --reps 5 --out benchmarks/results/report.json --plots benchmarks/results/plots

Smoke run (tiny workloads, 1 repetition, a few minutes; its numbers mean nothing)::

    .venv/bin/python benchmarks/bench_report.py --quick --out /tmp/report.json --plots /tmp/plots

Writes `--out` (JSON) and the same path with `.md` (markdown tables). The JSON holds:
`machine` (platform, processor, cpu_count, cpus_usable, python/torch/vllm versions,
load average at the end), `settings`, `pool` (omission sets, provisional flag, k, L),
`workloads` (sizes), `reps`, `seed`, `quick`; `protocol`, `latency`, `serving` (each
`times_s[case][config]` per repetition and `ratios` with median/min/max; latency adds
`ms`, serving adds `tokens` and `throughput`); `kv_tokens`, `kv_block_size`; `weights` (bytes per
engine, fraction of dense, decoder-layer bytes, shared-core savings); `mixed_decode`
(measured ratios and the bounds L/union and (L-k)/union); `router` (figures or a
`skipped` reason).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # weights via apply_model

from bench_engine import PAIRS, union_size  # noqa: E402
from harness import (  # noqa: E402
    MAX_MODEL_LEN, SETTINGS, alternate, configs, kv_tokens, machine_info, make_engines,
    prepare, ratio_stats, spread, timed,
)
from report_md import render  # noqa: E402
from weights import weights_report  # noqa: E402
from workloads import latency_cases, protocol_cases, serving_case, sizes  # noqa: E402

LATENCY_CONFIGS = ("dense", "static", "one set")
LATENCY_PAIRS = {"one set vs dense": ("dense", "one set"),
                 "one set vs static": ("static", "one set")}
WARMUP_TOKENS = 16  # warm-up compiles and allocates; it need not generate 512 tokens
ROUTER_TARGETS = {"prefill 256": 0.05, "prompt 128 gen 128": 0.01}


def measure_protocol(engines, cfg, setup, args) -> dict:
    times = alternate(engines, cfg, protocol_cases(setup.tokenizer, args.seed, args.quick),
                      args.reps, label="prefill/decode ")
    return {"times_s": times, "ratios": ratio_stats(times, PAIRS)}


def measure_latency(engines, cfg, cases, reps: int) -> dict:
    sub = {name: cfg[name] for name in LATENCY_CONFIGS}
    times = alternate(engines, sub, cases, reps, WARMUP_TOKENS, label="latency ")
    ms = {case: {c: spread([t * 1e3 for t in ts]) for c, ts in by_c.items()}
          for case, by_c in times.items()}
    return {"times_s": times, "ms": ms, "ratios": ratio_stats(times, LATENCY_PAIRS)}


SERVING_PAIRS = {**PAIRS, "routed vs dense": ("dense", "routed"),
                 "routed vs one set": ("one set", "routed")}


def measure_serving(engines, cfg, setup, args) -> dict:
    """All four configs, plus "routed" when the dir has a router: no `pudding_set`, so the
    router picks every prompt's set (router time included, as a user would see it)."""
    case = serving_case(setup.tokenizer, args.seed, MAX_MODEL_LEN, args.quick)
    if setup.pool.router is not None:
        cfg = {**cfg, "routed": ("pudding", lambda n: [None] * n)}
    times = alternate(engines, cfg, {"serving": case}, args.reps, WARMUP_TOKENS,
                      label="serving ")
    out_tokens = len(case.prompts) * case.out
    all_tokens = out_tokens + sum(map(len, case.prompts))
    throughput = {c: {"output_tok_s": spread([out_tokens / t for t in ts]),
                      "total_tok_s": spread([all_tokens / t for t in ts])}
                  for c, ts in times["serving"].items()}
    return {"times_s": times, "ratios": ratio_stats(times, SERVING_PAIRS), "throughput": throughput,
            "tokens": {"requests": len(case.prompts), "prompt": all_tokens - out_tokens,
                       "output": out_tokens}}


def mixed_decode(result: dict, union: int) -> dict:
    """Measured mixed-set decode ratios beside what the kept-layer union allows."""
    ratios = result["protocol"]["ratios"]
    return {"union_of_kept_layers": union, "num_layers": result["pool"]["num_layers"],
            "mixed_vs_one_set": ratios["mixed vs one set, decode"],
            "bound_vs_one_set": result["mixed_decode_bound_vs_one_set"],
            "mixed_vs_dense": ratios["mixed vs dense, decode"],
            "bound_vs_dense": result["mixed_decode_bound_vs_dense"]}


# --- router overhead -----------------------------------------------------------------
# A text router runs in the front end before the request is queued: its cost is its own
# wall time. A hidden router runs inside the engine's forward (router/in_engine.py): its
# cost is the routed request's time minus the same request pinned to the set the engine
# chose (same layers; the difference is pooling, the head and one re-plan), alternated.

def router_overhead(setup, engines, latency: dict, cases: dict, reps: int) -> dict:
    """Router time per prompt vs the one-set latency of the same prompt, or `skipped`."""
    if setup.pool.router is None:
        return {"skipped": f"{setup.pudding_dir} names no router (pudding.router is null)"}
    out = {}
    for case in (c for c in ROUTER_TARGETS if c in cases):
        extra = {}
        if setup.pool.router.kind == "hidden":
            times, shares, worker_s = _in_engine_overhead(engines["pudding"], cases[case], reps)
            extra = {"worker_route_ms": worker_s * 1e3,
                     "worker_share": worker_s / (latency["ms"][case]["one set"]["median"] / 1e3)
                     if case in latency.get("ms", {}) else None}
        else:
            times = _front_end_overhead(setup, cases[case].prompts[0], reps)
            shares = [t / (latency["ms"][case]["one set"]["median"] / 1e3) for t in times]
        out[case] = {"kind": setup.pool.router.kind,
                     "router_ms": spread([t * 1e3 for t in times]),
                     "share_of_one_set_latency": spread(shares),
                     "target_max_share": ROUTER_TARGETS[case], **extra}
    return out or {"skipped": "no latency case matches the router targets (--quick sizes)"}


def _front_end_overhead(setup, prompt, reps: int) -> list[float]:
    from vllm_pudding.router.runtime import load_router

    router = load_router(setup.pudding_dir, setup.pool)
    text = setup.tokenizer.decode(prompt)
    router.route([text])  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        router.route([text])
        times.append(time.perf_counter() - start)
    return times


def _in_engine_overhead(llm, case, reps: int) -> tuple[list[float], list[float], float]:
    """(routed - pinned) seconds and their share of pinned, per alternated pair; and the
    worker's own time in the routing step (pooling, head, re-plan) per routed prompt."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from vllm_pudding.depth import step_stats

    prompt = [TokensPrompt(prompt_token_ids=case.prompts[0])]
    (first,) = llm.generate(prompt, SamplingParams(max_tokens=1), use_tqdm=False)
    chosen = first.pudding_set
    deltas, shares = [], []
    before = llm.apply_model(step_stats)[0]
    for rep in range(8 * reps):  # the difference is small: more pairs than other figures
        pair = {}
        for name in (("routed", "pinned") if rep % 2 == 0 else ("pinned", "routed")):
            pair[name] = timed(llm, case.prompts[:1], case.out,
                               [None if name == "routed" else chosen])
        deltas.append(pair["routed"] - pair["pinned"])
        shares.append(deltas[-1] / pair["pinned"])
    after = llm.apply_model(step_stats)[0]
    calls = after.get("route_calls", 0) - before.get("route_calls", 0)
    worker_s = (after.get("route_seconds", 0.0) - before.get("route_seconds", 0.0)) / max(calls, 1)
    return deltas, shares, worker_s


# --- the run --------------------------------------------------------------------------

def run(args) -> dict:
    setup = prepare()
    engines = make_engines(setup)
    cfg = configs(len(setup.pool.omission_sets))
    lat_cases = latency_cases(setup.tokenizer, args.seed, args.quick)
    union = union_size(setup)
    result = {
        "pool": {"omission_sets": setup.pool.omission_sets, "k": setup.pool.k,
                 "num_layers": setup.num_layers, "provisional": setup.pool.provisional,
                 "omitted_by_all": sorted(setup.pool.omitted_by_all())},
        "num_layers": setup.num_layers, "k": setup.pool.k,
        "mixed_decode_bound_vs_dense": setup.num_layers / union,
        "mixed_decode_bound_vs_one_set": (setup.num_layers - setup.pool.k) / union,
        "reps": args.reps, "seed": args.seed, "quick": args.quick,
        "workloads": sizes(args.quick), "settings": SETTINGS, "command": sys.argv,
        "protocol": measure_protocol(engines, cfg, setup, args),
        "latency": measure_latency(engines, cfg, lat_cases, args.reps),
        "serving": measure_serving(engines, cfg, setup, args),
        "kv_tokens": {name: kv_tokens(llm) for name, llm in engines.items()},
        "kv_block_size": engines["dense"].llm_engine.vllm_config.cache_config.block_size,
        "weights": weights_report(engines, setup.pool.k, len(setup.pool.omitted_by_all())),
    }
    result["mixed_decode"] = mixed_decode(result, union)
    result["router"] = router_overhead(setup, engines, result["latency"], lat_cases, args.reps)
    result["machine"] = machine_info()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=None, help="default 5 (1 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny workloads: a smoke run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/report.json"))
    parser.add_argument("--plots", type=Path, default=None, help="folder for PNG charts")
    args = parser.parse_args()
    args.reps = args.reps or (1 if args.quick else 5)
    result = run(args)
    if args.plots:
        from plots import write_plots

        result["plots"] = [str(p) for p in write_plots(result, args.plots)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    markdown = render(result)
    args.out.with_suffix(".md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
