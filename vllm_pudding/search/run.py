"""Calibrated candidate-pool search (issue 3): greedy runs for every task x loss, then
the pool rule, written as a pool JSON with provenance and score tables.

    python -m vllm_pudding.search --model <hf dir> --k 7 --examples 128 \\
        --out vllm_pudding/pools/smollm2_135m_k7.json

Per task (`vllm_pudding.data.tasks.train_examples(task, n)`: the first n train
examples, zero-shot formats) one greedy search serves both losses (`greedy.py`), on
packed prefix trees (`scoring.py`). Tasks run in `--workers` processes (default 2,
one torch thread each). Each task checkpoints to
``<cache>/search/<model>-<fingerprint>/<task>.json`` after every greedy step and about
every minute in between (the trial results so far), so an interrupted search resumes
where it stopped; the fingerprint covers the model, the token ids, dtype and packing,
so changed inputs never reuse stale results. Then every candidate set is scored on
every task (needed for the rank rule and written as the score table) and the pool
rule of `pool.py` picks the sets, for k and for the prefix k (`--prefix-k`, default 4).
`--sanity-bound B` keeps out of the pool every set whose free generation broke: its
free-text loss exceeds dense's by more than B nats/token (`vllm_pudding.eval.sanity`,
through the engine, on the greedy results and enough runner-ups to refill).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime
import hashlib
import json
import multiprocessing as mp
import os
import re
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from vllm_pudding.search.greedy import GreedyRun, TrialCache, evaluate, greedy_task, planned_trials
from vllm_pudding.search.pool import dropped_sets, select_pool
from vllm_pudding.search.scoring import (LOSSES, EncodedExample, LayerModel, TaskScorer,
                                         encode_examples, pack)

DEFAULT_TASKS = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "winogrande")
SAVE_EVERY_S = 60.0


# ---------------------------------------------------------------------------- worker side

_W: dict = {}


def _init_worker(model_dir: str, dtype: str, threads: int, compiled: bool = True) -> None:
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    if mp.parent_process() is not None:  # a pool worker: exit when the main process dies
        import threading

        parent = os.getppid()

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype),
                                                 attn_implementation="sdpa").eval()
    _W["lm"] = LayerModel(model)
    _W["compiled"] = compiled


def _save(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def task_job(task: str, encoded: list[EncodedExample], k: int, ckpt: str, fingerprint: dict,
             pack_kw: dict, extra_sets: Sequence[Sequence[int]] = (), position: int = 0) -> dict:
    """Greedy search of one task (resumed from its checkpoint) and the losses of
    `extra_sets` on it. Returns the checkpoint document."""
    from tqdm import tqdm

    lm: LayerModel = _W["lm"]
    path = Path(ckpt)
    doc = json.loads(path.read_text()) if path.exists() else None
    if doc is None or doc.get("fingerprint") != fingerprint:
        doc = {"fingerprint": fingerprint, "task": task, "runs": {}, "cache": [],
               "seconds": 0.0, "cpu_seconds": 0.0, "layer_token_passes": 0, "head_tokens": 0,
               "trials_computed": 0}
    runs = {name: GreedyRun.from_json(r) for name, r in doc["runs"].items()}
    cache = TrialCache.from_json(doc["cache"])
    scorer = TaskScorer(lm, pack(encoded, **pack_kw), compiled=_W["compiled"])
    L = lm.num_layers
    t_start, s_start = time.time(), doc["seconds"]
    c_start, cs_start = time.process_time(), doc.get("cpu_seconds", 0.0)
    last_save = [time.time()]
    counted = [0, 0]  # scorer counters already added to doc

    def sync() -> None:
        doc["runs"] = {n: r.to_json() for n, r in runs.items()}
        doc["cache"] = cache.to_json()
        doc["seconds"] = s_start + time.time() - t_start
        doc["cpu_seconds"] = cs_start + time.process_time() - c_start
        doc["layer_token_passes"] += scorer.layer_calls - counted[0]
        doc["head_tokens"] += scorer.head_tokens - counted[1]
        counted[:] = [scorer.layer_calls, scorer.head_tokens]
        _save(path, doc)
        last_save[0] = time.time()

    total = len(LOSSES) * planned_trials(L, k)
    done = sum(len(x) for r in doc["runs"].values() for x in r["rankings"])
    bar = tqdm(total=total, initial=done, desc=f"{task:>13}", position=position,
               unit="trial", dynamic_ncols=True, mininterval=2.0, file=sys.stderr)
    step_t = [time.time(), time.process_time(), scorer.layer_calls, scorer.head_tokens]

    def on_trial(computed: bool, n_runs: int) -> None:
        doc["trials_computed"] += int(computed)
        bar.update(n_runs)
        if time.time() - last_save[0] > SAVE_EVERY_S:
            sync()

    def on_step(runs_now, _cache) -> None:
        now = [time.time(), time.process_time(), scorer.layer_calls, scorer.head_tokens]
        dt, dc, passes, heads = (a - b for a, b in zip(now, step_t))
        step_t[:] = now
        diverged = len({tuple(r.order) for r in runs_now.values()}) > 1
        bar.write(f"[{task}] step {max(len(r.order) for r in runs_now.values())}: "
                  + ", ".join(f"{n} -{r.order[-1]} ({r.step_losses[-1]:.3f})"
                              for n, r in runs_now.items())
                  + f"; {dt:.0f}s wall, {dc:.0f}s cpu; {passes:,} token-layers + "
                  f"{heads:,} head tokens; {passes / max(dc, 1e-9):,.0f} token-layers "
                  f"per cpu-s" + (" (runs diverged)" if diverged else ""), file=sys.stdout)
        sys.stdout.flush()
        sync()

    runs, cache = greedy_task(scorer, task, L, k, cache=cache, runs=runs,
                              on_trial=on_trial, on_step=on_step)
    bar.close()
    todo = [s for s in extra_sets if s not in cache]
    if todo:  # every set starts from the dense state entering its first omitted layer
        dense = list(range(L))
        states = scorer.prefix_states(dense, max(min(s) for s in todo))
        for s in todo:
            evaluate(scorer, s, L, cache, bases=[(dense, states)])
    sync()
    return doc


# ---------------------------------------------------------------------------- main side

def fingerprint(model_dir: Path, encoded: list[EncodedExample], dtype: str,
                pack_kw: dict) -> dict:
    h = hashlib.sha256(repr([(e.pairs, e.gold) for e in encoded]).encode()).hexdigest()[:16]
    cfg = json.loads((model_dir / "config.json").read_text())
    weights = sorted((p.name, p.stat().st_size) for p in model_dir.glob("*.safetensors"))
    mh = hashlib.sha256(json.dumps([cfg, weights], sort_keys=True).encode()).hexdigest()[:16]
    return {"model": mh, "examples": len(encoded), "tokens": h, "dtype": dtype, **pack_kw}


def dump_json(doc: dict) -> str:
    """Indented JSON with number lists on one line, so diffs stay readable."""
    text = json.dumps(doc, indent=1)
    return re.sub(r"\[[\d\s,.eE+-]+\]", lambda m: re.sub(r"\s+", " ", m.group()), text) + "\n"


def _round(d: dict, nd: int = 5) -> dict:
    return {k: (round(v, nd) if isinstance(v, float) else v) for k, v in d.items()}


def _run_jobs(jobs: list[tuple], executor, init_args: tuple) -> dict[str, dict]:
    """jobs: (task, kwargs) -> task -> checkpoint doc. In-process without an executor."""
    if executor is None:
        if _W.get("init") != init_args:
            _init_worker(*init_args)
            _W["init"] = init_args
        return {task: task_job(task, **kw) for task, kw in jobs}
    n = executor._max_workers
    futs = {executor.submit(task_job, task, position=i % n, **kw): task
            for i, (task, kw) in enumerate(jobs)}
    return {futs[f]: f.result() for f in cf.as_completed(futs)}


def _phases(executor, init, tasks, order, base, k, prefix_k, pool_size):
    """Greedy runs of every task, then the losses of every candidate set on every task
    (the rank rule needs them; they are written as the score table)."""
    t_search = time.time()
    docs = _run_jobs([(t, base[t]) for t in order], executor, init)
    search_wall = time.time() - t_search
    runs = [GreedyRun.from_json(docs[t]["runs"][name]) for t in tasks for name in LOSSES]

    ks = [k] + [p for p in prefix_k if p < k]
    want = set()
    for kk in ks:
        for e in select_pool(runs, kk, pool_size, score=lambda *_: {"likelihood": 0, "margin": 0}):
            want.add(tuple(e["layers"]))
        for r in runs:
            want.add(tuple(sorted(r.order[:kk])))
    t_score = time.time()
    caches = {t: TrialCache.from_json(docs[t]["cache"]) for t in tasks}
    missing = {t: [s for s in sorted(want) if s not in caches[t]] for t in tasks}
    if any(missing.values()):
        docs.update(_run_jobs([(t, {**base[t], "extra_sets": missing[t]}) for t in order
                               if missing[t]], executor, init))
        caches = {t: TrialCache.from_json(docs[t]["cache"]) for t in tasks}
    score_wall = time.time() - t_score

    return docs, search_wall, score_wall, runs, caches, ks


def _sanity(model_dir: Path, runs, k: int, pool_size: int, n: int,
            dtype: str) -> dict[tuple[int, ...], float]:
    """Free-text excess over dense of every set the pool rule could pick at this k: the
    greedy results and as many runner-ups as could be needed to refill the pool."""
    from itertools import islice

    from vllm_pudding.eval.sanity import free_text_excess
    from vllm_pudding.search.pool import greedy_sets, runner_ups

    cands = list(greedy_sets(runs, k))
    for key, _ in islice(runner_ups(runs, k), 2 * pool_size):
        if key not in cands:
            cands.append(key)
    excess = free_text_excess(model_dir, [list(c) for c in cands], n, dtype)
    return dict(zip(cands, excess))


def search(model_dir: Path, tasks: Sequence[str], k: int, n_examples: int, out: Path,
           prefix_k: Sequence[int] = (4,), pool_size: int = 10, dtype: str = "bfloat16",
           workers: int = 2, threads: int = 1, row_tokens: int = 512, chunk_tokens: int = 4096,
           compiled: bool = True, cache_root: Path | None = None,
           examples: dict | None = None, sanity_bound: float | None = None,
           sanity_n: int = 200) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    from vllm_pudding.default_model import cache_dir

    t0 = time.time()
    model_dir = Path(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    L = AutoConfig.from_pretrained(model_dir).num_hidden_layers
    if examples is None:
        from vllm_pudding.data.tasks import train_examples

        examples = {t: train_examples(t, n_examples) for t in tasks}
    encoded = {t: encode_examples(tok, examples[t]) for t in tasks}
    pack_kw = {"row_tokens": row_tokens, "chunk_tokens": chunk_tokens}
    fps = {t: {**fingerprint(model_dir, encoded[t], dtype, pack_kw), "compiled": compiled}
           for t in tasks}
    root = Path(cache_root or cache_dir() / "search")
    run_dir = root / f"{model_dir.name}-{fps[tasks[0]]['model']}-{dtype}"
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = {t: str(run_dir / f"{t}-n{len(encoded[t])}-{fps[t]['tokens']}.json") for t in tasks}
    tokens = {t: pack(encoded[t], **pack_kw).tokens for t in tasks}
    order = sorted(tasks, key=lambda t: -tokens[t])  # largest first: better load balance
    init = (str(model_dir), dtype, threads, compiled)
    print(f"pool search: {model_dir.name}, {L} layers, k={k}, tasks {list(tasks)}, "
          f"{n_examples} examples/task, tree tokens {tokens}, {workers} worker(s) x "
          f"{threads} thread(s), {dtype}, {'compiled' if compiled else 'eager'}; "
          f"checkpoints in {run_dir}", flush=True)

    base = {t: dict(encoded=encoded[t], k=k, ckpt=ckpt[t], fingerprint=fps[t], pack_kw=pack_kw)
            for t in tasks}
    executor = None
    if workers > 1:  # one pool for both phases: each worker loads and compiles once
        executor = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                          initializer=_init_worker, initargs=init)
    try:
        docs, search_wall, score_wall, runs, caches, ks = _phases(
            executor, init, tasks, order, base, k, prefix_k, pool_size)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)

    def score(task, s):
        return caches[task][s]

    def table(s):
        return {t: _round(score(t, tuple(s))) for t in tasks}

    sanity = {kk: _sanity(model_dir, runs, kk, pool_size, sanity_n, dtype)
              for kk in ks} if sanity_bound is not None else {}
    pools = {}
    for kk in ks:
        excess = sanity.get(kk)
        admissible = None if excess is None else (lambda s, e=excess: e[s] <= sanity_bound)
        pool = select_pool(runs, kk, pool_size, score=score, admissible=admissible)
        for e in pool:
            e["scores"] = table(e["layers"])
            e["provenance"] = [_round(p) for p in e["provenance"]]
        pools[kk] = {"sets": pool, "dropped": dropped_sets(runs, kk, pool)}

    passes = sum(d["layer_token_passes"] for d in docs.values())
    heads = sum(d["head_tokens"] for d in docs.values())
    cpu_s = sum(d.get("cpu_seconds", d["seconds"]) for d in docs.values())
    doc = {
        "provisional": False,
        "model": model_dir.name, "num_layers": L, "k": k,
        "method": (
            "PuDDing candidate search (BENCHMARKS.md): per calibration task the first "
            f"{n_examples} train examples (vllm_pudding.data.tasks.train_examples, zero-shot "
            "lm-eval formats); SLEB-style greedy removal for k steps (each step tries every "
            "alive layer but the first and the last, drops the lowest loss; ties to the lower "
            "index); losses from l = mean per-token log-prob of each choice's continuation: "
            "likelihood = -sum l_correct, margin = -sum((C-1) l_correct - sum l_wrong); pool = "
            "union of the task x loss greedy results, deduplicated; fewer than "
            f"{pool_size}: filled from the last step's runner-ups (round-robin by runner-up "
            f"rank); more: the {pool_size} best by mean rank over the task x loss columns. "
            f"Computed exactly (prefix trees, cached prefixes) in {dtype}."),
        "calibration": {"tasks": list(tasks), "examples_per_task": n_examples,
                        "tree_tokens": tokens, "dtype": dtype, **pack_kw},
        "sets": pools[k]["sets"],
        "dropped": pools[k]["dropped"],
        "prefix_pools": {str(kk): pools[kk] for kk in ks if kk != k},
        **({"generation_sanity": {
            "bound": sanity_bound, "n": sanity_n,
            "measure": "free-text excess NLL over dense, nats/token (vllm_pudding.eval.sanity)",
            "excess": {str(kk): {",".join(map(str, s_)): round(v, 4) for s_, v in e.items()}
                       for kk, e in sanity.items()}}} if sanity else {}),
        "dense_scores": {t: _round(caches[t][()]) for t in tasks},
        "runs": [{**r.to_json(), "step_losses": [round(x, 5) for x in r.step_losses],
                  "rankings": [[[c, round(v, 5)] for c, v in rk] for rk in r.rankings]}
                 for r in runs],
        "timing": {
            "wall_seconds": round(time.time() - t0, 1),
            "greedy_wall_seconds_this_call": round(search_wall, 1),
            "score_table_wall_seconds_this_call": round(score_wall, 1),
            "task_seconds_total": {t: round(docs[t]["seconds"], 1) for t in tasks},
            "task_cpu_seconds_total": {t: round(docs[t].get("cpu_seconds", 0.0), 1)
                                       for t in tasks},
            "trials_computed": {t: docs[t]["trials_computed"] for t in tasks},
            "layer_token_passes": passes, "full_model_token_passes": round(passes / L),
            "head_tokens": heads,
            "token_layers_per_cpu_second": round(passes / max(cpu_s, 1e-9)),
            "workers": workers, "threads_per_worker": threads, "cpus": os.cpu_count(),
            "layers": "torch.compile fused" if compiled else "HF eager",
        },
        "created": datetime.date.today().isoformat(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump_json(doc))
    return doc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vllm_pudding.search",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None,
                    help="HF model dir (default: the converted default model)")
    ap.add_argument("--k", type=int, default=7)
    ap.add_argument("--prefix-k", type=int, nargs="*", default=[4],
                    help="also build pools of the first removals (default: 4)")
    ap.add_argument("--examples", type=int, default=128, help="train examples per task")
    ap.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS))
    ap.add_argument("--pool-size", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--workers", type=int, default=2, help="task processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--row-tokens", type=int, default=512)
    ap.add_argument("--chunk-tokens", type=int, default=4096)
    ap.add_argument("--no-compile", action="store_true",
                    help="HF layers eager instead of the torch.compile'd fused layer")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="checkpoint root (default: <pudding cache>/search)")
    ap.add_argument("--sanity-bound", type=float, default=None,
                    help="keep only sets whose free-text excess NLL over dense (nats/token, "
                    "vllm_pudding.eval.sanity) is at most this, e.g. 1.8")
    ap.add_argument("--sanity-n", type=int, default=200, help="free-text paragraphs")
    args = ap.parse_args(argv)
    if args.model is None:
        from vllm_pudding.default_model import ensure_default_model

        args.model = ensure_default_model()
    torch.set_num_threads(args.threads)
    doc = search(args.model, args.tasks, args.k, args.examples, args.out,
                 prefix_k=args.prefix_k, pool_size=args.pool_size, dtype=args.dtype,
                 workers=args.workers, threads=args.threads, row_tokens=args.row_tokens,
                 chunk_tokens=args.chunk_tokens, compiled=not args.no_compile,
                 cache_root=args.cache_dir, sanity_bound=args.sanity_bound,
                 sanity_n=args.sanity_n)
    print(f"{len(doc['sets'])} sets -> {args.out} "
          f"({doc['timing']['wall_seconds']:.0f}s wall)")
    for e in doc["sets"]:
        who = ", ".join(f"{p['task']}/{p['loss']}" + ("" if p["source"] == "greedy"
                                                      else f" runner-up {p['rank']}")
                        for p in e["provenance"])
        print(f"  {e['layers']}  <- {who}")
