"""Zero-shot multiple-choice evaluation through vLLM.

    python -m vllm_pudding.eval --model <pudding or plain dir> --tasks all --n 1000 \\
        --sets all|0,1|none [--dense] [--extra-sets '{"sleb": [..], "shortgpt": [..]}'] \\
        --out results.json
    python -m vllm_pudding.eval --model <pudding dir> --split train --tasks calib6 \\
        --n 640 --sets all --out labels.json     # router labels (first n train docs)

- `--sets`: pool set ids of a pudding dir ("all", "0,3", or "none" = no `pudding_set`:
  the dir's default set, or the model itself when it is a plain dir).
- `--dense`: also evaluate the base model (a second engine; `pudding_meta.json`'s
  `base_model`, or `--base`).
- `--extra-sets`: labelled omission sets of the same k (JSON text or a file), e.g. the
  static baselines; they run in the same engine as the pool, through a temporary pudding
  dir on the base model whose pool is the model's pool followed by these sets.
- `--hf`: score a plain model dir with HF transformers instead of vLLM, same examples
  and scoring (`eval/hf_reference.py`): the reference for a converted model.
Prints a markdown table (percent, 95% intervals, n) and a timing table; `--out` keeps
the metrics and every example's per-choice log-probs (oracle, router labels).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _parse_sets(spec: str, pool_size: int) -> list[int | None]:
    spec = spec.strip().lower()
    if spec == "none":
        return [None]
    if spec == "all":
        return list(range(pool_size))
    ids = [int(x) for x in spec.split(",") if x.strip()]
    bad = [i for i in ids if not 0 <= i < pool_size]
    if bad:
        raise SystemExit(f"--sets: {bad} not in the pool (0..{pool_size - 1})")
    return ids


def _load_extra(spec: str | None) -> dict[str, list[int]]:
    if not spec:
        return {}
    text = spec if spec.lstrip().startswith("{") else Path(spec).read_text()
    raw = json.loads(text)
    if isinstance(raw, dict) and "sets" in raw and isinstance(raw["sets"], dict):
        raw = raw["sets"]
    if not isinstance(raw, dict):
        raise SystemExit("--extra-sets: expected a JSON object label -> layer list")
    return {str(k): sorted(int(x) for x in v) for k, v in raw.items()}


def _engine(model: Path, args):
    if args.hf:
        from vllm_pudding.eval.hf_reference import HFEngine

        return HFEngine(model, args.dtype)
    from vllm import LLM

    kw = dict(dtype=args.dtype, max_model_len=args.max_model_len, seed=0,
              enforce_eager=args.enforce_eager)
    if args.max_num_batched_tokens:
        kw["max_num_batched_tokens"] = args.max_num_batched_tokens
    return LLM(model=str(model), **kw)


def _shutdown(llm) -> None:
    try:
        if hasattr(llm, "llm_engine"):
            llm.llm_engine.engine_core.shutdown()
    finally:
        gc.collect()


def main(argv: list[str] | None = None) -> int:
    from vllm_pudding.data.tasks import CALIBRATION_TASKS, EVAL_TASKS

    p = argparse.ArgumentParser(prog="python -m vllm_pudding.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="pudding model dir or plain HF model dir")
    p.add_argument("--tasks", default="all",
                   help=f"comma list, 'all' ({','.join(EVAL_TASKS)}) or 'calib6'")
    p.add_argument("--split", default="validation", choices=("validation", "train"),
                   help="train: the first n train docs of a calibration task (router labels)")
    p.add_argument("--n", type=int, default=1000, help="examples per task (seeded sample; "
                   "splits at or under n are used whole); 0 = all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sets", default="all")
    p.add_argument("--dense", action="store_true", help="also evaluate the base model")
    p.add_argument("--base", default=None, help="base model dir (default: pudding_meta.json)")
    p.add_argument("--extra-sets", default=None, help="JSON (text or file) label -> layers")
    p.add_argument("--out", default=None, help="results JSON")
    p.add_argument("--no-examples", action="store_true", help="omit per-example scores from --out")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--enforce-eager", action="store_true",
                   help="no compiled layers: faster engine start, slower scoring (small runs)")
    p.add_argument("--hf", action="store_true",
                   help="score with HF transformers instead of vLLM (a plain model dir: the "
                        "reference for a converted model's dense accuracy; eval/hf_reference.py)")
    p.add_argument("--no-shared-context", action="store_true",
                   help="score single-token choices with one request per choice too")
    args = p.parse_args(argv)

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from transformers import AutoTokenizer

    from vllm_pudding.artifact import META_FILE, base_model, build_pudding_dir, load_pudding_dir
    from vllm_pudding.config import PuddingConfig
    from vllm_pudding.data.tasks import examples
    from vllm_pudding.eval.run import (evaluate_run, markdown_table, oracle_rows,
                                       results_json, timing_table)

    model = Path(args.model).resolve()
    named = {"all": list(EVAL_TASKS), "calib6": list(CALIBRATION_TASKS)}
    tasks = named.get(args.tasks) or [t.strip() for t in args.tasks.split(",")]
    try:
        pool = load_pudding_dir(model)
    except ValueError:
        pool = None
    base = Path(args.base) if args.base else None
    if base is None and pool is not None and (model / META_FILE).is_file():
        base = base_model(model)
    if pool is None:
        base = base or model
    extra = _load_extra(args.extra_sets)
    set_ids = _parse_sets(args.sets, len(pool.omission_sets)) if pool else [None]

    t_load = time.perf_counter()
    seed = None if args.split == "train" else args.seed  # train: the first n docs
    data = {t: examples(t, args.split, n=args.n or None, seed=seed) for t in tasks}
    print(f"data: {', '.join(f'{t} {len(v)}' for t, v in data.items())} "
          f"({time.perf_counter() - t_load:.1f}s)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(base or model))
    score_kw = dict(shared_context=not args.no_shared_context)
    if args.hf:
        if pool is not None or extra:
            raise SystemExit("--hf scores a plain (dense) model dir: no pool, no --extra-sets")
        score_kw["max_model_len"] = args.max_model_len
    runs, engines = [], []
    t_all = time.perf_counter()

    # Engine 1: the model's pool (+ extra sets, via a temporary pudding dir).
    tmp = None
    engine_dir = model
    pool_sets = pool.omission_sets if pool else []
    if extra:
        if base is None:
            raise SystemExit("--extra-sets needs the base model (--base)")
        tmp = tempfile.TemporaryDirectory(prefix="pudding-eval-")
        engine_dir = build_pudding_dir(
            base, PuddingConfig(omission_sets=list(pool_sets) + list(extra.values())),
            Path(tmp.name) / "pool", meta={"eval_extra_sets": extra})
    jobs = []  # (label, set choice, layers) on the pudding engine
    for sid in (set_ids if pool is not None else []):
        if sid is None:
            jobs.append(("default", None, list(pool_sets[pool.default_set])))
        else:
            jobs.append((f"set{sid}", sid, list(pool_sets[sid])))
    for j, (label, layers) in enumerate(extra.items()):
        jobs.append((label, len(pool_sets) + j, layers))
    if jobs:
        t0 = time.perf_counter()
        llm = _engine(engine_dir, args)
        engines.append(time.perf_counter() - t0)
        try:
            for label, sid, layers in jobs:
                runs.append(evaluate_run(llm, tokenizer, label, data, sid, layers, **score_kw))
        finally:
            _shutdown(llm)
            del llm
    if tmp is not None:
        tmp.cleanup()

    # Engine 2: the dense model (a plain --model, or the pudding dir's base with --dense).
    if pool is None or args.dense:
        if base is None:
            raise SystemExit("--dense needs the base model (--base)")
        t0 = time.perf_counter()
        llm = _engine(base, args)
        engines.append(time.perf_counter() - t0)
        try:
            runs.insert(0, evaluate_run(llm, tokenizer, "dense", data, None, [], **score_kw))
        finally:
            _shutdown(llm)
            del llm

    runs += oracle_rows(runs)
    total = time.perf_counter() - t_all
    print()
    print(markdown_table(runs))
    print()
    print(timing_table(runs))
    print(f"\nengine starts: {', '.join(f'{s:.0f}s' for s in engines)}; total {total:.0f}s")
    if args.out:
        meta = {"model": str(model), "base": str(base) if base else None, "tasks": tasks,
                "split": args.split, "n": args.n, "seed": seed, "dtype": args.dtype,
                "max_model_len": args.max_model_len, "seconds_total": total,
                "engine_start_seconds": engines,
                "pool": [list(s) for s in pool_sets], "extra_sets": extra,
                "shared_context": not args.no_shared_context,
                "engine": "transformers" if args.hf else "vllm",
                "argv": sys.argv[1:] if argv is None else argv}
        Path(args.out).write_bytes(results_json(runs, meta, with_examples=not args.no_examples))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
