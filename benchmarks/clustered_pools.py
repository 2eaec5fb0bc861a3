"""Clustered pools: what sub-pools of sets that share omitted layers would gain in set-affine
dispatch at 2 and 4 replicas, and what they would cost in accuracy. Stored data only.

    .venv/bin/python benchmarks/clustered_pools.py \\
        --out benchmarks/results/clustered_pools          # ~1-2 min, no engine

Why: with the default pool, 2 replicas holding 5 sets each still keep 29 of 30 layers per
replica, so set-affine dispatch gains little at few replicas (issue 12). A pool whose sets
fall into groups that omit the same layers would let each replica's batches keep fewer
layers; restricting the pool to such sets is the cheapest way to get one, and the stored
per-example scores say what the dropped sets were worth.

Candidates: every non-empty subset of the default pool's 10 sets, each a *sub-pool*
served by R replicas (R = 2, 4). Per sub-pool and R:
- cost: the dispatch policy's own model (`dispatch.policy.group_plan`, uniform traffic over
  the sub-pool's sets, the calibrated step cost's overhead at 32 rows per replica and its
  partial-layer cost): the busiest replica's work, in layer units;
- accuracy (validation, the 6 calibration tasks, mean over tasks, n per task in the
  output): the *task router* (per task, the sub-pool's best set on the train label rows,
  scored on validation: what a router that reads only the task reaches) and the
  *example oracle* (an example counts when some set of the sub-pool gets it right: a
  ceiling no router reaches, see eval/noise_floor);
- for the full pool, the sub-pools on the Pareto front of (cost, task-router accuracy),
  and per sub-pool size the cheapest and the most accurate sub-pool, the simulator
  (dispatch_model.simulate / simulate_steady with the calibrated step cost,
  benchmarks/results/dispatch_calibration.json): affine and set-blind throughput for a
  burst (32 requests per replica, 32 prompt / 128 output, each set equally often,
  shuffled) and a saturated closed loop (32 clients per replica, 200 requests per
  replica, uniform over the sub-pool's sets), relative to the full pool's set-blind
  throughput in the same simulation; and the task router's accuracy difference to the
  full pool, paired on the same validation examples (bootstrap over examples, 95%).

Scores: benchmarks/results/eval/calibrated_k7_val_{a,b}.json.gz (validation, every set),
train label rows: labels_train640.json.gz with labels_full/labels.json.gz (more ARC rows)
read through router.labels.load_tables (acc / acc_norm as lm-eval computes them).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path

import numpy as np

from dispatch_model import StepCost, simulate, simulate_steady
from harness import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
EVAL = RESULTS / "eval"
VALIDATION = [EVAL / "calibrated_k7_val_a.json.gz", EVAL / "calibrated_k7_val_b.json.gz"]
TRAIN = [EVAL / "labels_train640.json.gz", EVAL / "labels_full" / "labels.json.gz"]
ROUTERS = EVAL / "router_groups_k7" / "validation.json"  # the prompt routers, same examples
REPLICAS = (2, 4)
ROWS_PER_REPLICA = 32


def load_correct(num_sets: int) -> tuple[dict, dict]:
    """Per calibration task: ([n_val, sets], [n_train, sets]) bool correctness."""
    from vllm_pudding.data.tasks import CALIBRATION_TASKS
    from vllm_pudding.router.labels import load_tables

    val, train = load_tables(VALIDATION, num_sets), load_tables(TRAIN, num_sets)
    return ({t: val[t].correct for t in CALIBRATION_TASKS},
            {t: train[t].correct for t in CALIBRATION_TASKS})


def accuracy(val: dict, train: dict, sets: tuple[int, ...]) -> dict:
    from vllm_pudding.eval.paired import best_set_per_task

    picks = best_set_per_task(train, sets)  # the sub-pool's task router, on train rows
    ids = list(sets)
    return {"task_router": float(np.mean([val[t][:, picks[t]].mean() for t in val])),
            "task_oracle": float(np.mean([val[t][:, ids].mean(0).max() for t in val])),
            "example_oracle": float(np.mean([val[t][:, ids].any(1).mean() for t in val])),
            "task_picks": picks}


def paired_difference(val: dict, picks_a: dict, picks_b: dict, reps: int = 2000,
                      seed: int = 0) -> list[float]:
    """Mean over tasks of a's minus b's task-router accuracy, with a 95% bootstrap over
    each task's validation examples (the same resample for both)."""
    from vllm_pudding.eval.paired import paired_bootstrap

    diffs = [c[:, picks_a[t]].astype(float) - c[:, picks_b[t]].astype(float)
             for t, c in val.items()]
    return list(paired_bootstrap(diffs, reps, seed))


def plan_cost(kept: list[frozenset[int]], sets: tuple[int, ...], replicas: int,
              cost: StepCost) -> dict:
    from vllm_pudding.dispatch.policy import group_plan

    sub = [kept[s] for s in sets]
    plan = group_plan(sub, [1.0] * len(sub), replicas,
                      overhead_layers=cost.overhead_layers(ROWS_PER_REPLICA),
                      partial_layer_cost=cost.partial_layer_cost())
    return {"bottleneck": plan.bottleneck,
            "groups": [sorted(sets[i] for i in g) for g in plan.groups],
            "replicas_per_group": list(plan.replicas),
            "kept_union_per_group": [len(frozenset().union(*(sub[i] for i in g)))
                                     for g in plan.groups]}


def pareto(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on both cost (lower) and task-router accuracy (higher)."""
    front, best_acc = [], -1.0
    for row in sorted(rows, key=lambda r: (r["bottleneck"], -r["task_router"])):
        if row["task_router"] > best_acc + 1e-12:
            front.append(row)
            best_acc = row["task_router"]
    return front


def selected(rows: list[dict], full: list[int]) -> list[dict]:
    """The rows worth simulating, each tagged why: the full pool, the Pareto front, and
    per sub-pool size the cheapest (ties: more accurate) and the most accurate (ties:
    cheaper) sub-pool."""
    why: dict[tuple, list[str]] = {}
    by_sets = {tuple(r["sets"]): r for r in rows}
    why.setdefault(tuple(full), []).append("full pool")
    for r in pareto(rows):
        why.setdefault(tuple(r["sets"]), []).append("Pareto")
    for k in sorted({len(r["sets"]) for r in rows}):
        size = [r for r in rows if len(r["sets"]) == k]
        cheap = min(size, key=lambda r: (r["bottleneck"], -r["task_router"]))
        best = min(size, key=lambda r: (-r["task_router"], r["bottleneck"]))
        why.setdefault(tuple(cheap["sets"]), []).append(f"cheapest of {k}")
        why.setdefault(tuple(best["sets"]), []).append(f"most accurate of {k}")
    out = [{**by_sets[sets], "why": tags} for sets, tags in why.items()]
    return sorted(out, key=lambda r: (len(r["sets"]), r["bottleneck"]))


def simulated(kept: list[frozenset[int]], sets: tuple[int, ...], replicas: int,
              cost: StepCost, seed: int) -> dict:
    """Affine and set-blind tokens/s of the sub-pool: a balanced burst and a saturated
    closed loop (uniform traffic over its sets)."""
    sub = [kept[s] for s in sets]
    n = ROWS_PER_REPLICA * replicas
    ids = [i % len(sub) for i in range(n)]
    random.Random(seed).shuffle(ids)
    out = {}
    for mode in ("affine", "blind"):
        burst = simulate(sub, ids, replicas, cost, affine=mode == "affine")
        steady = simulate_steady(sub, [1.0] * len(sub), replicas, cost, mode == "affine",
                                 concurrency=ROWS_PER_REPLICA, seed=seed)
        out[mode] = {"burst": burst["tokens_per_s"], "steady": steady["tokens_per_s"],
                     "replica_sets": [[sets[i] for i in r] for r in burst["replica_sets"]]
                     if mode == "affine" else None}
    return out


def run(seed: int, routable_only: bool = False) -> dict:
    from vllm_pudding.artifact import load_pudding_dir
    from vllm_pudding.default_pudding import ensure_default_pudding_dir
    from simulate_dispatch import kept_layers

    pudding_dir = ensure_default_pudding_dir()
    pool = load_pudding_dir(pudding_dir)
    num_layers = json.loads((pudding_dir / "config.json").read_text())["num_hidden_layers"]
    kept = kept_layers(pool, num_layers)
    num_sets = len(kept)
    calibration = json.loads((RESULTS / "dispatch_calibration.json").read_text())
    cost = StepCost(**calibration["step_cost"])
    val, train = load_correct(num_sets)
    full = tuple(range(num_sets))
    if routable_only:  # sub-pools of the sets a router may pick (generation-sane)
        full = tuple(pool.routable_sets or full)
    accs = {sets: accuracy(val, train, sets)
            for k in range(1, len(full) + 1) for sets in itertools.combinations(full, k)}
    full_acc = accs[full]
    out = {"meta": {"command": " ".join(sys.argv), "seed": seed, "machine": machine_info(),
                    "pool": [list(s) for s in pool.omission_sets],
                    "routable_sets": list(pool.routable_sets or range(num_sets)),
                    "routable_only": routable_only,
                    "n_validation": {t: len(c) for t, c in val.items()},
                    "n_train": {t: len(c) for t, c in train.items()},
                    "validation_files": [str(p.relative_to(RESULTS.parent.parent))
                                         for p in VALIDATION],
                    "train_files": [str(p.relative_to(RESULTS.parent.parent)) for p in TRAIN],
                    "step_cost": calibration["step_cost"],
                    "overhead_layers_at_32_rows": cost.overhead_layers(ROWS_PER_REPLICA),
                    "candidates": len(accs)},
           "full_pool": {"sets": list(full), **full_acc},
           "prompt_routers_full_pool_avg6": {
               k: v["avg6"] for k, v in json.loads(ROUTERS.read_text())["summary"].items()},
           "replicas": {}}
    for replicas in REPLICAS:
        rows = []
        for sets, acc in accs.items():
            rows.append({"sets": list(sets), **plan_cost(kept, sets, replicas, cost),
                         **{k: acc[k] for k in ("task_router", "task_oracle",
                                                "example_oracle")}})
        front = selected(rows, list(full))
        full_sim = simulated(kept, full, replicas, cost, seed)
        for row in front:
            sets = tuple(row["sets"])
            sim = full_sim if sets == full else simulated(kept, sets, replicas, cost, seed)
            row["simulated_tok_per_s"] = sim
            row["affine_over_blind"] = {k: sim["affine"][k] / sim["blind"][k]
                                        for k in ("burst", "steady")}
            row["affine_over_full_pool_blind"] = {
                k: sim["affine"][k] / full_sim["blind"][k] for k in ("burst", "steady")}
            row["affine_over_full_pool_affine"] = {
                k: sim["affine"][k] / full_sim["affine"][k] for k in ("burst", "steady")}
            row["task_router_minus_full_pool"] = paired_difference(
                val, accs[sets]["task_picks"], full_acc["task_picks"], seed=seed)
            row["task_picks"] = accs[sets]["task_picks"]
        out["replicas"][str(replicas)] = {
            "full_pool": {"affine_over_blind": {k: full_sim["affine"][k] / full_sim["blind"][k]
                                                for k in ("burst", "steady")},
                          **plan_cost(kept, full, replicas, cost)},
            "selected": front}
    return out


def report(result: dict) -> str:
    meta, full = result["meta"], result["full_pool"]
    n_val = ", ".join(f"{t} {n}" for t, n in meta["n_validation"].items())
    n_train = ", ".join(f"{t} {n}" for t, n in meta["n_train"].items())
    lines = [
        "# Clustered pools: set-affine gain vs accuracy (issue 12)", "",
        f"Command: `{meta['command']}`. Stored scores only, no engine runs. Accuracy: "
        "validation, mean over the 6 calibration tasks (acc / acc_norm as lm-eval), "
        f"n = {n_val} examples; task router picks each task's best set of the sub-pool on "
        f"the train label rows (n = {n_train}). Throughput: the simulator "
        "(`benchmarks/dispatch_model.py`) with the calibrated step cost "
        "(`benchmarks/results/dispatch_calibration.json`, a loaded machine: its fixed "
        f"per-step overhead is {meta['overhead_layers_at_32_rows']:.0f} layers' worth at 32 "
        "rows, so fewer kept layers move the step less than on a quiet machine), uniform "
        "traffic over the sub-pool's sets, burst of 32 requests per replica / saturated "
        "closed loop of 32 clients per replica, 32 prompt / 128 output tokens.", "",
        f"Full pool ({'the routable' if meta.get('routable_only') else 'all'} "
        f"{len(full['sets'])} sets {full['sets']}): task router "
        f"{100 * full['task_router']:.1f}%, example "
        f"oracle {100 * full['example_oracle']:.1f}% (routable sets "
        f"{meta['routable_sets']}). Candidates: all {meta['candidates']} non-empty "
        "subsets; shown: the full pool, the Pareto front of (policy cost, task-router "
        "accuracy), and per sub-pool size the cheapest and the most accurate sub-pool. "
        "Task oracle: each task's best set of the sub-pool picked on validation itself "
        "(in-sample, optimistic); example oracle: a ceiling no router reaches.", "",
        "For scale, the prompt routers on the full pool's routable sets, same examples "
        "(`benchmarks/results/eval/router_groups_k7/validation.json`): " + ", ".join(
            f"{k} {100 * v:.1f}%" for k, v in result["prompt_routers_full_pool_avg6"].items())
        + ". Neither beats the task router on the full pool, so the task router is a fair "
        "stand-in for what routing reaches today (a prompt router's own accuracy on a "
        "sub-pool is not computed: its per-set scores are not stored); what a better "
        "prompt router could still draw from dropped sets is bounded by the example "
        "oracle, mostly noise (`benchmarks/results/eval/noise_floor_k7.md`).", ""]
    for replicas, block in result["replicas"].items():
        f = block["full_pool"]
        lines += [f"## {replicas} replicas", "",
                  f"Full pool: groups {f['groups']} keep {f['kept_union_per_group']} layers; "
                  f"simulated affine / blind {f['affine_over_blind']['burst']:.3f} (burst), "
                  f"{f['affine_over_blind']['steady']:.3f} (saturated).", "",
                  "| sub-pool | why | policy groups (kept layers) | affine / blind: burst, "
                  "saturated | affine / full pool blind: burst, saturated | task router % "
                  "| minus full pool, points (95%) | task oracle % | example oracle % |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in block["selected"]:
            groups = "; ".join(f"{g} ({u})" for g, u in zip(row["groups"],
                                                          row["kept_union_per_group"]))
            d = row["task_router_minus_full_pool"]
            lines.append(
                f"| {row['sets']} | {', '.join(row['why'])} | {groups} | "
                f"{row['affine_over_blind']['burst']:.3f}, "
                f"{row['affine_over_blind']['steady']:.3f} | "
                f"{row['affine_over_full_pool_blind']['burst']:.3f}, "
                f"{row['affine_over_full_pool_blind']['steady']:.3f} | "
                f"{100 * row['task_router']:.1f} | {100 * d[0]:+.1f} ({100 * d[1]:+.1f} to "
                f"{100 * d[2]:+.1f}) | {100 * row['task_oracle']:.1f} | "
                f"{100 * row['example_oracle']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="output stem (.json, .md)")
    ap.add_argument("--routable-only", action="store_true",
                    help="candidates from the pool's routable (generation-sane) sets only")
    args = ap.parse_args()
    result = run(args.seed, args.routable_only)
    text = report(result)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
