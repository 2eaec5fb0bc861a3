"""Predicted set-affine vs set-blind dispatch for 2-16 replicas of the default pudding dir.

Two steps (dispatch_model.py holds the models):

1. calibrate: one PuDDing engine of the default dir (bf16, eager, one core), decode step
   seconds for batches of B rows whose sets keep a union of U layers (P of them kept by
   some rows only): every step of a batch run to completion is timed, the 20th
   percentile over `--reps` alternated repetitions (64 decode steps each) is the point,
   for B in {4, 16} and 1, 2 (sharing 22 kept layers, or 19), 5 and 10 sets mixed; a
   least-squares fit `a + b*B + c*U + d*P`, and the prefill seconds per prompt token.
2. predict: the simulator with that step cost, the default pool and set frequencies from
   the routers' choices on validation prompts (benchmarks/results/eval/calibrated_k7.json,
   `set_histogram` of the hidden or text router, all tasks), affine vs set-blind
   throughput at 2, 4, 8, 16 replicas, for a burst of 64 requests per 2 replicas (32
   prompt / 128 output, all sent at once: the makespan pays for any imbalance between
   groups) and for a saturated closed loop (32 clients per replica, 200 requests per
   replica, each client sending its next request when the last ends); also the two 2-replica benchmark workloads ((a) all 10 sets, (b) 2 sets) and
   the prediction from the one-engine composition figures of issue 12.

Commands::

    VLLM_CPU_OMP_THREADS_BIND=0 .venv/bin/python benchmarks/simulate_dispatch.py calibrate \\
        --reps 2 --out benchmarks/results/dispatch_calibration.json
    .venv/bin/python benchmarks/simulate_dispatch.py predict \\
        --calibration benchmarks/results/dispatch_calibration.json \\
        --out benchmarks/results/dispatch_simulation.json

Each writes a JSON with its metadata (command, machine, settings) beside the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from harness import percentile

from dispatch_model import (StepCost, composition_prediction, draw_sets, fit_step_cost,
                            simulate, simulate_steady)

RESULTS = Path(__file__).resolve().parent / "results"
MIXES = {"1": [0], "2 sharing": [0, 1], "2": [0, 4], "5": [0, 1, 2, 3, 4], "10": list(range(10))}
ROWS = (4, 16)
PROMPT, OUT = 32, 65
REPLICAS = (2, 4, 8, 16)
WORKLOADS = {"a_all_10_sets": list(range(10)), "b_2_sets": [0, 4]}


def kept_layers(pool, num_layers: int) -> list[frozenset[int]]:
    return [frozenset(i for i, k in enumerate(row) if k) for row in pool.kept_mask(num_layers)]


def step_times(llm, prompts: list[list[int]], sets: list[int], out: int) -> list[float]:
    """Seconds between the engine's outputs (one per engine step) for one batch run to
    completion."""
    from harness import _requests

    engine = llm.llm_engine
    inputs, params = _requests(prompts, out, sets)
    tag = time.perf_counter()
    for i, (p, sp) in enumerate(zip(inputs, params)):
        engine.add_request(f"cal-{tag}-{i}", p, sp)
    times = []
    while engine.has_unfinished_requests():
        t0 = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - t0)
    return times


def calibrate(reps: int, seed: int, out_path: Path) -> dict:
    """Per-step seconds by (rows, union, partial): the interval between consecutive
    engine outputs (one per step); the first (the batch's prefill) is the prefill point,
    the decode point is the 20th percentile of the other intervals over all repetitions:
    other processes sharing the core only ever add time, so a low percentile estimates
    the step's own cost. Written to out_path after every repetition."""
    from harness import machine_info, make_engine, prepare
    from workloads import workload_tokens

    setup = prepare()
    kept = kept_layers(setup.pool, setup.num_layers)
    llm = make_engine(setup.pudding_dir)
    prompts = workload_tokens(setup.tokenizer, max(ROWS), PROMPT, seed)
    cases = [(rows, k) for rows in ROWS for k in MIXES]
    sets = {c: [MIXES[c[1]][i % len(MIXES[c[1]])] for i in range(c[0])] for c in cases}
    for c in cases[:2]:  # warm-up
        step_times(llm, prompts[:c[0]], sets[c], 4)
    runs = {c: {"prefill": [], "decode": []} for c in cases}
    for rep in range(reps):
        for c in (cases if rep % 2 == 0 else cases[::-1]):
            times = step_times(llm, prompts[:c[0]], sets[c], OUT)
            runs[c]["prefill"].append(times[0])
            runs[c]["decode"] += times[1:]
        print(f"rep {rep + 1}/{reps} done", flush=True)
        result = _calibration(runs, kept, rep + 1, seed, machine_info())
        out_path.write_text(json.dumps(result, indent=1))
    return result


def _calibration(runs: dict, kept, reps: int, seed: int, machine: dict) -> dict:
    points, table = [], []
    for (rows, k), r in runs.items():
        union = len(frozenset().union(*(kept[s] for s in MIXES[k])))
        partial = union - len(frozenset.intersection(*(kept[s] for s in MIXES[k])))
        step = percentile(r["decode"], 0.2)
        points.append((rows, union, partial, step))
        table.append({"rows": rows, "sets": MIXES[k], "union_layers": union,
                      "partial_layers": partial, "step_s_p20": step,
                      "step_s_median": statistics.median(r["decode"]),
                      "decode_steps": len(r["decode"]), "prefill_s": r["prefill"]})
    prefill = min(min(r["prefill"]) / (rows * PROMPT) for (rows, _), r in runs.items())
    cost = fit_step_cost(points, p=prefill)
    return {"meta": {"command": " ".join(sys.argv), "reps": reps, "seed": seed,
                     "prompt_tokens": PROMPT, "output_tokens": OUT, "machine": machine,
                     "engine": "default pudding dir, bf16, enforce_eager, one core "
                               "(VLLM_CPU_OMP_THREADS_BIND), harness.make_engine",
                     "statistic": "decode: 20th percentile of the intervals between engine "
                                  "outputs; prefill: min over reps of the first interval / "
                                  "prompt tokens"},
            "points": table, "step_cost": cost.__dict__,
            "fit_check": [{"rows": r, "union": u, "partial": q, "measured": s,
                           "fit": cost.step(r, u, q)} for r, u, q, s in points]}


def router_freqs(router: str) -> list[float]:
    data = json.loads((RESULTS / "eval" / "calibrated_k7.json").read_text())
    hist = data["routers"][f"pudding-{router}"]["set_histogram"]
    counts = [sum(col) for col in zip(*hist.values())]
    return [c / sum(counts) for c in counts]


def predict(calibration: dict, router: str, seed: int, per_two_replicas: int) -> dict:
    from vllm_pudding.artifact import load_pudding_dir
    from vllm_pudding.default_pudding import ensure_default_pudding_dir

    pudding_dir = ensure_default_pudding_dir()
    pool = load_pudding_dir(pudding_dir)
    num_layers = json.loads((pudding_dir / "config.json").read_text())["num_hidden_layers"]
    kept = kept_layers(pool, num_layers)
    cost = StepCost(**calibration["step_cost"])
    freqs = router_freqs(router)

    def pair(set_ids, replicas):
        blind = simulate(kept, set_ids, replicas, cost, affine=False)
        affine = simulate(kept, set_ids, replicas, cost, affine=True)
        return {"replicas": replicas, "requests": len(set_ids),
                "affine_over_blind": affine["tokens_per_s"] / blind["tokens_per_s"],
                "affine": affine, "blind": blind}

    scale = []
    for replicas in REPLICAS:
        n = per_two_replicas * replicas // 2
        row = pair(draw_sets(freqs, n, seed), replicas)
        steady = {mode: simulate_steady(kept, freqs, replicas, cost, mode == "affine",
                                        concurrency=per_two_replicas // 2, seed=seed)
                  for mode in ("affine", "blind")}
        row["steady"] = {**steady, "affine_over_blind": steady["affine"]["tokens_per_s"]
                         / steady["blind"]["tokens_per_s"]}
        scale.append(row)
    bench = {}
    for name, sets in WORKLOADS.items():
        set_ids = [sets[i % len(sets)] for i in range(per_two_replicas)]
        random.Random(seed).shuffle(set_ids)  # arrival order (a fixed cycle would align
        # with a round-robin balancer and hand it a set-affine split by accident)
        bench[name] = {"simulated": pair(set_ids, 2),
                       "composition": composition_prediction(len(sets), 2)}
    return {"meta": {"command": " ".join(sys.argv), "seed": seed, "router": router,
                     "set_freqs": freqs, "requests_per_2_replicas": per_two_replicas,
                     "prompt_tokens": 32, "output_tokens": 128,
                     "calibration": calibration["meta"], "step_cost": calibration["step_cost"]},
            "scale": scale, "benchmark_workloads": bench,
            "composition_at_scale": [composition_prediction(10, r) for r in REPLICAS]}


def report(result: dict) -> str:
    lines = [f"set frequencies ({result['meta']['router']} router): "
             + ", ".join(f"{f:.3f}" for f in result["meta"]["set_freqs"])]
    for row in result["scale"]:
        lines.append(f"{row['replicas']:2d} replicas: affine/blind burst of {row['requests']} "
                     f"{row['affine_over_blind']:.3f}, steady closed loop "
                     f"{row['steady']['affine_over_blind']:.3f} ("
                     f"{row['steady']['affine']['spills']} spills); affine groups "
                     f"{row['affine']['replica_sets']}")
    for name, b in result["benchmark_workloads"].items():
        lines.append(f"workload {name}: simulated {b['simulated']['affine_over_blind']:.3f}, "
                     f"composition figures {b['composition']['affine_over_blind']:.3f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    cal = sub.add_parser("calibrate")
    cal.add_argument("--reps", type=int, default=2)
    cal.add_argument("--seed", type=int, default=0)
    cal.add_argument("--out", type=Path, required=True)
    pre = sub.add_parser("predict")
    pre.add_argument("--calibration", type=Path, required=True)
    pre.add_argument("--router", choices=("hidden", "text"), default="hidden")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--requests", type=int, default=64,
                     help="requests per 2 replicas (scaled with the replica count)")
    pre.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "calibrate":
        result = calibrate(args.reps, args.seed, args.out)
        print(json.dumps(result["fit_check"], indent=1))
    else:
        result = predict(json.loads(args.calibration.read_text()), args.router, args.seed,
                         args.requests)
        print(report(result))
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
