"""Serving-aware pools: subsets of the calibrated pool whose sets share omitted layers.

Why: a decode step reads the weights of every layer some request in the batch keeps,
so a batch mixing the whole pool pays for the union of kept layers (30 of 30 for the
default pool: no layer is omitted by every set) while each request computes only 23.
A pool whose candidates share a core of c omitted layers bounds that union by L - c,
so mixed decode can reach (L-k)/(L-c) of one-set speed, and the shared core is never
loaded (weights shrink like a static pruning of c layers). The price is accuracy:
the router chooses among fewer, more alike sets.

How: for every subset of the pool (2^10 here) the shared core is the intersection of
its sets. The subset's router is the trained head with its scores restricted to the
subset (argmax over the subset's columns; `subset_router` slices the head). Per core
size c, the subset with the best held-out routed accuracy on the train labels
(the same held-out rows router training used; validation is never used to choose) is
kept and then scored on the validation splits from the committed per-example scores
(`calibrated_k7_val_*.json.gz`): a request routed to set S scores exactly like S pinned.

    python -m vllm_pudding.search.serving_pool \\
        --labels benchmarks/results/eval/labels_train640.json.gz \\
        --results benchmarks/results/eval/calibrated_k7_val_a.json.gz \\
                  benchmarks/results/eval/calibrated_k7_val_b.json.gz \\
        --out benchmarks/results/eval/serving_pools --build-dirs

`--build-dirs` also writes a pudding dir per chosen subset (`<cache>/pudding/serving-core<c>`,
with the sliced router installed); benchmarks/bench_serving_pool.py builds the same dirs itself.
Measured (hidden router, 2026-11-29): full pool 44.6 avg6; sets [0, 1, 4] (core of 3) 43.7;
sets [4, 5] (core of 6) 44.2; mixed decode 0.754 / 0.925 / 0.920 of one-set speed.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from vllm_pudding.config import PuddingConfig
from vllm_pudding.router.head import pick


def shared_core(sets: list[list[int]]) -> set[int]:
    return set.intersection(*(set(s) for s in sets))


def subsets_by_core(sets: list[list[int]], min_size: int = 2) -> dict[int, list[tuple]]:
    """core size -> every subset (tuple of set ids, at least `min_size`) with that core."""
    out: dict[int, list[tuple]] = {}
    for r in range(min_size, len(sets) + 1):
        for ids in itertools.combinations(range(len(sets)), r):
            out.setdefault(len(shared_core([sets[i] for i in ids])), []).append(ids)
    return out


def restricted_choice(scores: torch.Tensor, ids: tuple) -> np.ndarray:
    """The router's pick among `ids` only (set ids of the full pool)."""
    return pick(scores, torch.tensor(ids)).numpy()


def subset_router(router_dir: Path, ids: tuple, out: Path) -> Path:
    """A router folder for the sub-pool: the same head, output rows sliced to `ids`."""
    from safetensors.torch import load_file, save_file

    from vllm_pudding.router.spec import HEAD_FILE, load_spec, write_spec

    spec = load_spec(router_dir, check_encoder=False)
    state = load_file(str(router_dir / HEAD_FILE))
    last = max(k for k in state if k.startswith("mlp.") and k.endswith(".weight"))
    bias = last[: -len("weight")] + "bias"
    state[last], state[bias] = state[last][list(ids)], state[bias][list(ids)]
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / HEAD_FILE))
    meta = {**spec.meta, "sliced_from": str(router_dir), "pool_set_ids": list(ids)}
    write_spec(out, spec.model_copy(update={
        "omission_sets": [spec.omission_sets[i] for i in ids], "meta": meta}))
    return out


def build_serving_dir(pdir: Path, ids: tuple, out: Path) -> Path:
    """A pudding dir with only the sets `ids` of `pdir`'s pool and its router sliced."""
    import tempfile

    from vllm_pudding.artifact import base_model, build_pudding_dir, load_pudding_dir
    from vllm_pudding.router.install import install_router

    pool = load_pudding_dir(pdir)
    sub = PuddingConfig(omission_sets=[pool.omission_sets[i] for i in ids])
    out = build_pudding_dir(base_model(pdir), sub, out,
                            meta={"serving_pool_of": str(pdir), "pool_set_ids": list(ids)})
    if pool.router is not None:
        with tempfile.TemporaryDirectory() as tmp:
            install_router(out, subset_router(pdir / pool.router.path, ids, Path(tmp) / "r"))
    return out


def held_out_scores(pdir: Path, labels: list[Path]):
    """(router, held-out Rows, router scores of the held-out rows) as router training saw them."""
    from vllm_pudding.artifact import base_model, load_pudding_dir
    from vllm_pudding.router.features import cached_features, spec_feature_key
    from vllm_pudding.router.labels import load_tables
    from vllm_pudding.router.runtime import Router
    from vllm_pudding.router.spec import load_spec
    from vllm_pudding.router.train import Rows, split_rows, train_texts

    pool = load_pudding_dir(pdir)
    rdir = pdir / pool.router.path
    spec = load_spec(rdir, pool.omission_sets)
    router = Router(rdir, spec, base_model(pdir))
    tables = load_tables(labels, len(pool.omission_sets))
    texts = train_texts(tables)
    key = spec_feature_key(spec, base_model(pdir), "train")
    feats = {t: cached_features(router.encode, texts[t], key) for t in tables}
    held = Rows(tables, feats, split_rows(tables, 0.2), 1)
    with torch.no_grad():
        scores = router.head(held.x)
    return router, held, scores


def validation_scores(router, runs, meta) -> tuple[dict, dict]:
    """Per task: router scores of the validation texts, and the texts' task order."""
    from vllm_pudding.router.features import cached_features, spec_feature_key
    from vllm_pudding.router.report import validation_texts

    set_runs = [r for r in runs if r.label.startswith("set")]
    tasks = list(set_runs[0].examples)
    texts = validation_texts(tasks, meta.get("n", 1000), meta.get("seed", 0),
                             {t: [e.doc_id for e in set_runs[0].examples[t]] for t in tasks})
    key = spec_feature_key(router.spec, router.model_dir, "validation")
    with torch.no_grad():
        return {t: router.head(cached_features(router.encode, texts[t], key)) for t in tasks}


def choose(sets, held, scores, min_core: int) -> list[dict]:
    """Per core size >= min_core: the subset with the best held-out routed avg."""
    from vllm_pudding.router.train import mean

    rows = []
    for core, candidates in sorted(subsets_by_core(sets).items()):
        if core < min_core:
            continue
        best = max(candidates, key=lambda ids: mean(held.routed_acc(restricted_choice(scores, ids))))
        rows.append({"core": core, "sets": list(best),
                     "held_out": held.routed_acc(restricted_choice(scores, best)),
                     "candidates": len(candidates)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vllm_pudding.search.serving_pool",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pudding-dir", default=None, help="default: the default pudding dir")
    p.add_argument("--labels", nargs="+", required=True)
    p.add_argument("--results", nargs="+", required=True, help="validation eval JSONs")
    p.add_argument("--out", required=True, help="output path stem (.md, .json)")
    p.add_argument("--build-dirs", action="store_true")
    args = p.parse_args(argv)
    from vllm_pudding.search.serving_pool_report import report

    return report(args)


if __name__ == "__main__":
    raise SystemExit(main())
