"""How much of a router's per-example label survives a harmless change of the prompt?

Issue 13 asks for the label noise floor "by scoring the same rows under prompt variants".
A router learns, per prompt, which set scores the correct answer best (the likelihood
target: mean log-prob of the gold continuation under each set, centred over the sets).
If that ranking changes when the prompt only gains a neutral first line, most of what the
router is asked to learn is noise, and no router can beat a per-task choice by much.

Each sampled validation example of the six calibration tasks is scored under every pool set
twice through the engine (pinned sets): as the eval scores it, and with
`--preamble` (default "Answer the following.") prepended to every context. Reported per
task: top-1 agreement of the best set by likelihood between the two variants (chance
1/num_sets), mean Pearson correlation of the centred per-set likelihoods between variants,
the share of (example, set) correctness that flips, and the same top-1 agreement between two
*different* examples of the task (what a router that only knows the task could match).

    .venv/bin/python benchmarks/label_noise_variants.py --n 100 \\
        --out benchmarks/results/eval/label_noise_variants.json       # ~20 min, 1 core
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from vllm_pudding.data.tasks import CALIBRATION_TASKS, METRIC, validation_examples


def with_preamble(ex, preamble: str):
    import msgspec

    return msgspec.structs.replace(ex, contexts=[preamble + c for c in ex.contexts])


def likelihoods(llm, tok, exs, num_sets: int) -> tuple[np.ndarray, np.ndarray]:
    """([examples, sets] mean log-prob of the gold continuation, [examples, sets] correct)."""
    from vllm_pudding.eval.scoring import score_examples

    lik = np.zeros((len(exs), num_sets))
    ok = np.zeros((len(exs), num_sets), dtype=bool)
    for s in range(num_sets):
        for i, sc in enumerate(score_examples(llm, tok, exs, s)):
            lik[i, s] = sc.mean_logprobs[sc.gold]
            ok[i, s] = sc.correct_norm if METRIC.get(sc.task) == "acc_norm" else sc.correct
    return lik, ok


def compare(a: np.ndarray, b: np.ndarray, ok_a: np.ndarray, ok_b: np.ndarray) -> dict:
    ca, cb = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    corr = [float(np.corrcoef(x, y)[0, 1]) for x, y in zip(ca, cb)
            if x.std() > 0 and y.std() > 0]
    top_a, top_b = a.argmax(1), b.argmax(1)
    shifted = np.roll(top_b, 1)  # another example's best set under the variant
    return {"n": len(a), "top1_agreement": float((top_a == top_b).mean()),
            "top1_agreement_other_example": float((top_a == shifted).mean()),
            "chance": 1 / a.shape[1], "centred_corr_mean": float(np.mean(corr)),
            "correct_flips": float((ok_a != ok_b).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pudding-dir", default=None, help="default: the default pudding dir")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preamble", default="Answer the following.\n")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()

    from vllm import LLM

    from vllm_pudding.artifact import load_pudding_dir
    from vllm_pudding.default_pudding import ensure_default_pudding_dir

    pdir = Path(args.pudding_dir) if args.pudding_dir else ensure_default_pudding_dir()
    num_sets = len(load_pudding_dir(pdir).omission_sets)
    llm = LLM(model=str(pdir), dtype="bfloat16", max_model_len=2048, seed=0,
              kv_cache_memory_bytes=1 << 30)
    tok = llm.get_tokenizer()
    start, out = time.perf_counter(), {}
    for task in CALIBRATION_TASKS:
        exs = validation_examples(task, n=args.n, seed=args.seed)
        a, ok_a = likelihoods(llm, tok, exs, num_sets)
        b, ok_b = likelihoods(llm, tok, [with_preamble(e, args.preamble) for e in exs], num_sets)
        out[task] = compare(a, b, ok_a, ok_b)
        print(task, json.dumps(out[task]), flush=True)
    result = {"pudding_dir": str(pdir), "n": args.n, "seed": args.seed,
              "preamble": args.preamble, "num_sets": num_sets, "tasks": out,
              "seconds": time.perf_counter() - start}
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
