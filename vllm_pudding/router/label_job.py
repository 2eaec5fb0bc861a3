"""Router labels at the paper's scale: train examples scored under every pool set, resumable.

The paper trains its router on every train example of its tasks, each scored under every
candidate set. Here that is hours of CPU, so the job runs in the background in chunks:
each chunk (one task, `--chunk` examples, every set) is written as soon as it is scored,
a restarted job skips the chunks it finds, and after every chunk the chunks are merged
into one label table (`<out>/labels.json.gz`, the format `router.labels.load_tables`
reads). A partial table is a valid, smaller one: commit it.

Examples are a seeded sample over the WHOLE train split (`--caps` per task, 0 = all), kept
in file order. Not the first n: the train files are ordered by source (HellaSwag's first
thousands are ActivityNet captions, its validation split mostly WikiHow), so a prefix
trains the router on a domain that validation barely sees. For the same reason the tasks
named in `--strided` get strided chunks (chunk j of m holds sample rows j, j+m, ...), so
that every chunk spans the whole file, and chunks run round-robin over the tasks: a job
stopped at any point leaves every task an unbiased, roughly equal share.

    .venv/bin/python -m vllm_pudding.router.label_job --model "$(.venv/bin/pudding default-dir)" \\
        --caps arc_easy=0,arc_challenge=0,boolq=2000,hellaswag=2500,piqa=2500,winogrande=2500 \\
        --strided boolq,hellaswag,piqa,winogrande --out benchmarks/results/eval/labels_full
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import time
from pathlib import Path

from vllm_pudding.data.tasks import CALIBRATION_TASKS

META = "job.json"
MERGED = "labels.json.gz"


def parse_caps(spec: str) -> dict[str, int]:
    """"task=n,..." -> {task: n} (0 = every train example); unknown tasks are an error."""
    caps = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        task, _, n = part.partition("=")
        if task not in CALIBRATION_TASKS or not n.isdigit():
            raise ValueError(f"--caps: {part!r} is not task=n with task in "
                             f"{', '.join(CALIBRATION_TASKS)}")
        caps[task] = int(n)
    return caps


def chunk_path(out: Path, task: str, index: int) -> Path:
    return out / f"{task}-{index:04d}.json.gz"


def task_chunks(exs: list, chunk: int, strided: bool) -> list[list]:
    """A task's sample cut into chunks of at most `chunk`: contiguous, or strided so that
    each chunk spans the whole sample."""
    if not strided:
        return [exs[i:i + chunk] for i in range(0, len(exs), chunk)]
    m = -(-len(exs) // chunk)
    return [exs[j::m] for j in range(m)]


def plan_chunks(caps: dict[str, int], chunk: int, seed: int, strided: frozenset = frozenset()):
    """(task, chunk index, examples) of the whole job, round-robin over the tasks."""
    from itertools import zip_longest

    from vllm_pudding.data.tasks import train_examples

    per_task = [[(task, i, c) for i, c in enumerate(task_chunks(
        train_examples(task, n=cap or None, seed=seed), chunk, task in strided))]
        for task, cap in caps.items()]
    for layer in zip_longest(*per_task):
        yield from (item for item in layer if item is not None)


def check_chunk(path: Path, exs) -> None:
    """A chunk on disk must hold the examples this job plans there (else the sample
    changed under it, e.g. a data fix: move the folder or delete the stale chunks)."""
    rows = json.loads(gzip.decompress(path.read_bytes()))
    found = [str(e["doc_id"]) for e in next(iter(rows.values()))]
    if found != [str(e.doc_id) for e in exs]:
        raise ValueError(f"{path}: holds other examples than this job plans for it "
                         f"({len(found)} vs {len(exs)} rows); delete it to re-score")


def score_chunk(llm, tokenizer, task: str, exs, num_sets: int) -> dict:
    """{"set<i>": [ScoredExample dict, ...]} for one chunk under every set."""
    import msgspec

    from vllm_pudding.eval.scoring import score_examples

    return {f"set{s}": msgspec.to_builtins(score_examples(llm, tokenizer, exs, s))
            for s in range(num_sets)}


def merge(out: Path, meta: dict) -> dict:
    """Every finished chunk, per task in chunk order, as one eval-style results JSON."""
    examples: dict[str, dict[str, list]] = {}
    counts = {}
    for task in meta["caps"]:
        for path in sorted(out.glob(f"{task}-*.json.gz")):
            for label, rows in json.loads(gzip.decompress(path.read_bytes())).items():
                examples.setdefault(label, {}).setdefault(task, []).extend(rows)
        counts[task] = len(examples.get("set0", {}).get(task, []))
    payload = {**meta, "examples_per_task": counts, "examples": examples}
    (out / MERGED).write_bytes(gzip.compress(json.dumps(payload).encode(), mtime=0))
    return counts


def run(llm, tokenizer, num_sets: int, caps: dict[str, int], out: Path, meta: dict,
        chunk: int = 256, seed: int = 0, log=print,
        strided: frozenset = frozenset()) -> dict[str, int]:
    """Scores the chunks not yet on disk; returns the merged examples per task."""
    out.mkdir(parents=True, exist_ok=True)
    keys = ("caps", "seed", "chunk", "pool")
    if (out / META).is_file():
        old = json.loads((out / META).read_text())
        if {k: old.get(k) for k in keys} != {k: meta.get(k) for k in keys}:
            raise ValueError(f"{out / META}: another job's settings; use another output folder")
    (out / META).write_text(json.dumps(meta, indent=1))
    counts = merge(out, meta)
    for task, index, exs in plan_chunks(caps, chunk, seed, strided):
        path = chunk_path(out, task, index)
        if path.is_file():
            check_chunk(path, exs)
            continue
        t0 = time.perf_counter()
        rows = score_chunk(llm, tokenizer, task, exs, num_sets)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(gzip.compress(json.dumps(rows).encode(), mtime=0))
        tmp.rename(path)  # a chunk is either whole or absent
        counts = merge(out, meta)
        log(f"{task} chunk {index}: {len(exs)} examples x {num_sets} sets in "
            f"{time.perf_counter() - t0:.0f}s; merged so far {counts}")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vllm_pudding.router.label_job",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="pudding model dir")
    p.add_argument("--caps", required=True, help="task=n,... (0 = all train examples)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strided", default="",
                   help="tasks whose chunks are strided over their sample (comma list)")
    p.add_argument("--dtype", default="bfloat16")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from vllm import LLM

    from vllm_pudding.artifact import load_pudding_dir

    caps = parse_caps(args.caps)
    strided = frozenset(parse_caps(",".join(f"{t}=0" for t in args.strided.split(",") if t)))
    pool = load_pudding_dir(args.model)
    meta = {"model": str(args.model), "split": "train", "caps": caps, "seed": args.seed,
            "chunk": args.chunk, "dtype": args.dtype, "strided": sorted(strided),
            "pool": [list(s) for s in pool.omission_sets]}
    llm = LLM(model=str(args.model), dtype=args.dtype, max_model_len=2048, seed=0,
              kv_cache_memory_bytes=1 << 30)
    try:
        counts = run(llm, llm.get_tokenizer(), len(pool.omission_sets), caps, args.out, meta,
                     args.chunk, args.seed, log=lambda m: print(m, flush=True),
                     strided=strided)
    finally:
        llm.llm_engine.engine_core.shutdown()
    print(f"done: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
