"""The serving-pool table: per shared-core size, the chosen subset's accuracy and decode bound.

Run through `python -m vllm_pudding.search.serving_pool` (its docstring has the command).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vllm_pudding.search.serving_pool import (build_serving_dir, choose, held_out_scores,
                                              restricted_choice, validation_scores)


def validation_row(label: str, runs, val_scores: dict, ids: tuple):
    from vllm_pudding.router.report import routed_run

    choice = {t: restricted_choice(s, ids).tolist() for t, s in val_scores.items()}
    return routed_run(label, runs, choice), choice


def report(args) -> int:
    from vllm_pudding.artifact import load_pudding_dir
    from vllm_pudding.default_model import cache_dir
    from vllm_pudding.eval.run import averages
    from vllm_pudding.router.report import load_runs
    from vllm_pudding.router.train import mean

    if args.pudding_dir is None:
        from vllm_pudding.default_pudding import ensure_default_pudding_dir

        pdir = ensure_default_pudding_dir()
    else:
        pdir = Path(args.pudding_dir)
    pool = load_pudding_dir(pdir)
    sets = [list(s) for s in pool.omission_sets]
    num_layers = json.loads((pdir / "config.json").read_text())["num_hidden_layers"]
    router, held, scores = held_out_scores(pdir, [Path(x) for x in args.labels])
    runs, meta = load_runs([Path(x) for x in args.results])
    val_scores = validation_scores(router, runs, meta)
    rows = choose(sets, held, scores, min_core=0)
    full = {"core": len(set.intersection(*map(set, sets))), "sets": list(range(len(sets))),
            "held_out": held.routed_acc(restricted_choice(scores, tuple(range(len(sets))))),
            "candidates": 1, "label": "full pool"}
    out_rows = []
    for row in [full] + rows:
        ids = tuple(row["sets"])
        run, choice = validation_row(f"core{row['core']}", runs, val_scores, ids)
        avg = averages(run)["avg6"]
        row = {**row, "label": row.get("label", f"best subset, core {row['core']}"),
               "union_kept": num_layers - row["core"],
               "decode_bound_vs_one_set": (num_layers - pool.k) / (num_layers - row["core"]),
               "held_out_avg": mean(row["held_out"]), "val_avg6": avg.value,
               "val_avg6_fmt": avg.fmt(), "val_tasks": {t: r.value.value for t, r in run.tasks.items()},
               "omitted_sets": [sets[i] for i in ids], "shared_core":
                   sorted(set.intersection(*(set(sets[i]) for i in ids))),
               "set_histogram": np.bincount(np.concatenate(list(map(np.array, choice.values()))),
                                            minlength=len(sets)).tolist()}
        if args.build_dirs and row["label"] != "full pool" and row["core"] > 0:
            row["pudding_dir"] = str(build_serving_dir(
                pdir, ids, cache_dir() / "pudding" / f"serving-core{row['core']}"))
        out_rows.append(row)
    out = Path(args.out)
    result = {"pudding_dir": str(pdir), "router": router.spec.kind, "num_layers": num_layers,
              "k": pool.k, "validation_n": meta, "held_out_rows": {t: len(b) for t, b in
                                                                   held.bounds.items()},
              "rows": out_rows}
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


def markdown(result: dict) -> str:
    n_held = ", ".join(f"{t} {n}" for t, n in result["held_out_rows"].items())
    lines = [f"Serving-aware pools: subsets of the calibrated pool (L={result['num_layers']}, "
             f"k={result['k']}) whose sets share a core of omitted layers, routed by the "
             f"{result['router']} router restricted to the subset. Chosen per core size on "
             f"held-out train rows ({n_held}); validation avg6 from the committed per-example "
             "scores (n: ARC-E 570, ARC-C 299, others 1000; 95% interval).", "",
             "| pool | sets | shared core | union kept | mixed-decode bound vs one set | "
             "held-out avg6 | validation avg6 |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['label']} | {r['sets']} | {r['shared_core']} | {r['union_kept']} | "
                     f"{r['decode_bound_vs_one_set']:.3f} | {100 * r['held_out_avg']:.1f} | "
                     f"{r['val_avg6_fmt']} |")
    return "\n".join(lines) + "\n"
