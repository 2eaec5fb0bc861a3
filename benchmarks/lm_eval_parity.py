"""lm-evaluation-harness's figures beside the project's scorer's, document for document.

    .venv/bin/python benchmarks/lm_eval_parity.py \\
        --run dense=/tmp/lm_eval/dense:dense --run "set2, pinned=/tmp/lm_eval/set2:set2" \\
        --scores benchmarks/results/eval/calibrated_k7_val_a.json.gz \\
        --out benchmarks/results/eval/lm_eval/arc_parity

Each `--run LABEL=DIR:RUN`: DIR is an `lm_eval run ... --log_samples -o DIR` output (its
`results_*.json` and `samples_<task>_*.jsonl`, found below DIR), RUN the label of the
project's run on the same model and set in the `--scores` files (`python -m
vllm_pudding.eval --out`; e.g. "dense", "set2"). Per run and task, on the documents both
scored: n, acc and acc_norm from each side, how often they predict the same answer (acc's
argmax; acc_norm's argmax of log-prob per choice character), and how far the per-choice
log-likelihoods differ. lm-eval's acc / acc_norm are its own per-sample metrics (the
samples' `acc` / `acc_norm`); its predictions are the argmaxes of its logged
log-likelihoods, as its `process_results` takes them. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import msgspec
import numpy as np

from vllm_pudding.eval.metrics import wilson
from vllm_pudding.eval.scoring import ScoredExample
from vllm_pudding.eval.stored import read_results


def _latest(folder: Path, pattern: str) -> Path:
    found = sorted(folder.rglob(pattern))
    if not found:
        raise SystemExit(f"{folder}: no {pattern} (run lm_eval with --log_samples -o {folder})")
    return found[-1]


def lm_eval_samples(folder: Path, task: str) -> dict[str, dict]:
    """doc id (str) -> {lls, choices, gold, acc, acc_norm} from lm-eval's samples file."""
    out = {}
    with _latest(folder, f"samples_{task}_*.jsonl").open() as f:
        for line in f:
            s = json.loads(line)
            resps = s["filtered_resps"]
            lls = [float(r[0]) for r in resps]
            out[str(s["doc_id"])] = {"lls": lls, "choices": s["doc"]["choices"]["text"],
                                     "gold": int(s["target"]), "acc": float(s["acc"]),
                                     "acc_norm": float(s["acc_norm"])}
    return out


def compare(lm: dict[str, dict], ours: dict[str, ScoredExample]) -> dict:
    ids = [d for d in lm if d in ours]
    if not ids:
        raise SystemExit("no document in common")
    same_pred = same_norm = 0
    diffs = []
    for d in ids:
        a, b = lm[d], ours[d]
        if a["gold"] != b.gold or len(a["lls"]) != len(b.logprobs):
            raise SystemExit(f"doc {d}: lm-eval's doc and the project's differ")
        lens = [len(c) for c in a["choices"]]
        same_pred += int(np.argmax(a["lls"])) == b.pred
        same_norm += int(np.argmax(np.asarray(a["lls"]) / np.asarray(lens, float))) == b.pred_norm
        diffs += [abs(x - y) for x, y in zip(a["lls"], b.logprobs)]
    n = len(ids)
    diffs = np.asarray(diffs)

    def est(flags):
        e = wilson(int(sum(flags)), n)
        return {"value": e.value, "low": e.low, "high": e.high, "n": n}
    return {
        "n": n,
        "lm_eval": {"acc": est(lm[d]["acc"] for d in ids),
                    "acc_norm": est(lm[d]["acc_norm"] for d in ids)},
        "project": {"acc": est(ours[d].correct for d in ids),
                    "acc_norm": est(ours[d].correct_norm for d in ids)},
        "same_answer_acc": same_pred / n, "same_answer_acc_norm": same_norm / n,
        "loglik_abs_diff": {"mean": float(diffs.mean()), "median": float(np.median(diffs)),
                            "max": float(diffs.max()), "choices": int(diffs.size)},
    }


def lm_eval_config(folder: Path) -> dict:
    res = json.loads(_latest(folder, "results_*.json").read_text())
    cfg = res.get("config", {})
    return {"lm_eval_version": res.get("lm_eval_version"), "model": cfg.get("model"),
            "model_args": cfg.get("model_args"), "limit": cfg.get("limit"),
            "date": res.get("date"), "seconds": res.get("total_evaluation_time_seconds"),
            "results": res.get("results")}


def markdown(rows: list[dict]) -> str:
    def pct(e):
        return f"{100 * e['value']:.1f}"
    lines = ["| run | task | n | acc lm-eval | acc project | acc_norm lm-eval | "
             "acc_norm project | same answer (acc) | same answer (acc_norm) | "
             "median / max abs log-lik diff |", "|" + "---|" * 10]
    for r in rows:
        c = r["compare"]
        lines.append(" | ".join([
            f"| {r['label']}", r["task"], str(c["n"]), pct(c["lm_eval"]["acc"]),
            pct(c["project"]["acc"]), pct(c["lm_eval"]["acc_norm"]),
            pct(c["project"]["acc_norm"]), f"{100 * c['same_answer_acc']:.1f}%",
            f"{100 * c['same_answer_acc_norm']:.1f}%",
            f"{c['loglik_abs_diff']['median']:.3f} / {c['loglik_abs_diff']['max']:.3f} |"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, help="LABEL=LM_EVAL_DIR:PROJECT_RUN")
    p.add_argument("--scores", nargs="+", required=True, help="the project's eval JSONs")
    p.add_argument("--tasks", default="arc_easy,arc_challenge")
    p.add_argument("--out", required=True, help="output path stem (.json, .md)")
    args = p.parse_args(argv)

    examples: dict[str, dict] = {}
    for path in args.scores:
        examples.update(read_results(path)["examples"])
    rows, configs = [], {}
    for spec in args.run:
        label, _, rest = spec.partition("=")
        folder, _, run = rest.rpartition(":")
        if run not in examples:
            raise SystemExit(f"--run {spec}: no run {run!r} in --scores")
        configs[label] = {"lm_eval_dir": folder, "project_run": run,
                          **lm_eval_config(Path(folder))}
        for task in args.tasks.split(","):
            ours = {e["doc_id"]: msgspec.convert(e, ScoredExample) for e in examples[run][task]}
            rows.append({"label": label, "task": task,
                         "compare": compare(lm_eval_samples(Path(folder), task), ours)})
    md = markdown(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"runs": configs, "rows": rows}, indent=1))
    out.with_suffix(".md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
