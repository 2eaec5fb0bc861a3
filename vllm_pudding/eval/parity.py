"""Dense parity of a converted model: the same examples scored by two engines, compared.

    python -m vllm_pudding.eval --model M --tasks calib6 --n 30 --dtype float32 \\
        --enforce-eager --out vllm.json
    python -m vllm_pudding.eval --model M --hf --tasks calib6 --n 30 --dtype float32 \\
        --out hf.json
    python -m vllm_pudding.eval.parity vllm.json hf.json [--label dense]

Why: a checkpoint converted from a GGUF is trusted when vLLM (what users serve) and HF
transformers (the reference implementation of the architecture) agree on it, example by
example: the same predicted choice under each task's metric, and per-choice log-probs
within float32 rounding. Accuracy alone would hide compensating disagreements.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vllm_pudding.eval.run import task_result
from vllm_pudding.eval.scoring import ScoredExample
from vllm_pudding.eval.stored import read_results, scored_examples


def load_examples(path: Path, label: str) -> dict[str, list[ScoredExample]]:
    data = read_results(path)
    if label not in data.get("examples", {}):
        raise ValueError(f"{path}: no per-example scores for run {label!r} "
                         f"(runs: {sorted(data.get('examples', {}))})")
    return scored_examples(data, label)


def parity_rows(a: dict[str, list[ScoredExample]],
                b: dict[str, list[ScoredExample]]) -> list[dict]:
    """Per task: n, each side's metric, same-prediction count, max |logprob diff|."""
    rows = []
    for task in a:
        if task not in b:
            continue
        ea, eb = a[task], b[task]
        if [e.doc_id for e in ea] != [e.doc_id for e in eb]:
            raise ValueError(f"{task}: the two files scored different examples")
        ra, rb = task_result(task, ea), task_result(task, eb)
        pred = "pred_norm" if ra.metric == "acc_norm" else "pred"
        same = sum(getattr(x, pred) == getattr(y, pred) for x, y in zip(ea, eb))
        diff = max(abs(p - q) for x, y in zip(ea, eb) for p, q in zip(x.logprobs, y.logprobs))
        rows.append({"task": task, "metric": ra.metric, "n": len(ea),
                     "a": getattr(ra, ra.metric), "b": getattr(rb, rb.metric), "same": same,
                     "max_abs_logprob_diff": diff})
    return rows


def markdown(rows: list[dict], names: tuple[str, str]) -> str:
    out = [f"| task (metric) | n | {names[0]} | {names[1]} | same prediction | "
           "max abs logprob diff |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['task']} ({r['metric']}) | {r['n']} | {r['a'].fmt()} | "
                   f"{r['b'].fmt()} | {r['same']}/{r['n']} | {r['max_abs_logprob_diff']:.4f} |")
    avg = [sum(r[k].value for r in rows) / len(rows) for k in ("a", "b")]
    out.append(f"| average of {len(rows)} | | {100 * avg[0]:.1f} | {100 * avg[1]:.1f} | "
               f"{sum(r['same'] for r in rows)}/{sum(r['n'] for r in rows)} | "
               f"{max(r['max_abs_logprob_diff'] for r in rows):.4f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vllm_pudding.eval.parity",
                                description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path, help="results JSON (e.g. vLLM)")
    p.add_argument("b", type=Path, help="results JSON (e.g. --hf)")
    p.add_argument("--label", default="dense", help="the run compared in both files")
    p.add_argument("--names", default="vLLM,HF", help="column names, comma-separated")
    args = p.parse_args(argv)
    names = tuple(args.names.split(","))
    if len(names) != 2:
        raise SystemExit("--names: two comma-separated names")
    rows = parity_rows(load_examples(args.a, args.label), load_examples(args.b, args.label))
    print(markdown(rows, names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
