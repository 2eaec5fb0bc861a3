"""PuDDing's end-to-end accuracy table: routed rows beside dense, static baselines, pool, oracles.

    python -m vllm_pudding.router.report --pudding-dir $(pudding default-dir) \\
        --results val_a.json val_b.json --routers vllm_pudding/routers/smollm2_135m_k7 \\
        --out benchmarks/results/eval/calibrated_k7

`--results`: `python -m vllm_pudding.eval` JSONs of the validation splits (dense, every
pool set `set0..`, `sleb`, `shortgpt`), possibly split across processes. Each router
routes every example once from its prompt text (`labels.router_text`), and the routed
row takes each example's scores under its routed set from those files: the same
numbers the engine gives a request routed there (exactness: a request routed to set S
equals set S pinned, tests/test_router_engine.py), without scoring everything twice.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import msgspec
import numpy as np

from vllm_pudding.eval.run import (RunResult, averages, markdown_table, oracle_rows,
                                   task_result)
from vllm_pudding.eval.stored import read_results, scored_examples


def load_runs(paths: list[Path]) -> tuple[list[RunResult], dict]:
    """Runs of several eval JSONs, merged by label (per-example scores kept)."""
    runs, meta = {}, {}
    for p in paths:
        data = read_results(p)
        meta = meta or {k: data[k] for k in ("n", "seed", "dtype", "tasks") if k in data}
        for label, r in data["runs"].items():
            if label.startswith("oracle"):
                continue
            exs = scored_examples(data, label)
            tasks = {t: task_result(t, exs[t]) if t in exs else None for t in r["tasks"]}
            runs[label] = RunResult(label=label, layers=r["layers"],
                                    tasks={t: v for t, v in tasks.items() if v}, examples=exs)
    order = sorted(runs, key=lambda l: (l != "dense", not l.startswith("set"),
                                        int(l[3:]) if l[3:].isdigit() else 0, l))
    return [runs[l] for l in order], meta


def routed_run(label: str, runs: list[RunResult], choice: dict[str, list[int]]) -> RunResult:
    """Each example's scores under the set its router chose."""
    by_set = {int(r.label[3:]): r for r in runs if r.label[3:].isdigit()
              and r.label.startswith("set")}
    tasks, examples = {}, {}
    for task, sets in choice.items():
        exs = [by_set[s].examples[task][i] for i, s in enumerate(sets)]
        examples[task] = exs
        tasks[task] = task_result(task, exs)
    return RunResult(label=label, layers=None, tasks=tasks, examples=examples)


def validation_texts(tasks: list[str], n: int, seed: int, doc_ids: dict[str, list[str]]):
    from vllm_pudding.data.tasks import validation_examples
    from vllm_pudding.router.labels import router_text

    out = {}
    for t in tasks:
        exs = validation_examples(t, n=n or None, seed=seed)
        if [e.doc_id for e in exs] != doc_ids[t]:
            raise ValueError(f"{t}: results rows are not validation_examples(n={n}, seed={seed})")
        out[t] = [router_text(e) for e in exs]
    return out


def route_cached(router, texts: dict[str, list[str]], chat: bool = False) -> dict[str, list[int]]:
    """Routes every text; encoder features are cached on disk (re-runs cost the head only)."""
    import torch

    from vllm_pudding.router.features import cached_features, spec_feature_key
    from vllm_pudding.router.head import pick

    key = spec_feature_key(router.spec, router.model_dir, "validation", chat)
    out = {}
    for t, tx in texts.items():
        with torch.no_grad():
            out[t] = pick(router.head(cached_features(router.encode, tx, key)),
                          router.routable).tolist()
    return out


def agreement(runs: list[RunResult], choice: dict[str, list[int]],
              target: str = "choice_logprob") -> dict[str, float]:
    """Top-1 agreement of the router with the oracle-best candidate per example (the set
    with the highest `target` label: the router's own training target), per task."""
    from vllm_pudding.router.labels import table_from_examples

    sets = sorted((int(r.label[3:]), r) for r in runs if r.label.startswith("set")
                  and r.label[3:].isdigit())
    out = {}
    for task, picked in choice.items():
        table = table_from_examples(task, [[msgspec.to_builtins(e) for e in r.examples[task]]
                                           for _, r in sets])
        out[task] = float((table.target(target).argmax(1) == np.array(picked)).mean())
    return out


def paired_lines(rows, best_static, task_row, tasks, extra: dict) -> list[str]:
    """Paired 95% bootstrap intervals (over examples) of each routed row minus the best
    static run and minus the task router, on the six calibration tasks."""
    from vllm_pudding.data.tasks import CALIBRATION_TASKS
    from vllm_pudding.eval.paired import paired_difference

    six = [t for t in tasks if t in CALIBRATION_TASKS]
    others = [best_static] + ([task_row] if task_row else [])
    lines = ["", f"Paired differences, avg over {len(six)} tasks, 95% bootstrap over "
             "examples (points):"]
    extra["paired"] = {}
    for row in rows:
        for other in others:
            d, low, high = paired_difference(row, other, six)
            extra["paired"][f"{row.label} - {other.label}"] = [d, low, high]
            lines.append(f"- {row.label} minus {other.label}: {100 * d:+.1f} "
                         f"[{100 * low:+.1f}, {100 * high:+.1f}]")
    return lines


def _cost(label: str, info: dict) -> str:
    ms = 1000 * info["route_seconds"] / info["prompts"]
    how = f"({info['target']}, {info['objective']})"
    if label.endswith("hidden"):
        return (f"offline features {ms:.1f} ms per prompt in HF fp32 {how}; in the engine "
                "the head reads the engine's own states (router.engine_check).")
    return f"router {ms:.1f} ms per prompt in one batched call {how}."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vllm_pudding.router.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pudding-dir", required=True)
    p.add_argument("--results", nargs="+", required=True)
    p.add_argument("--routers", required=True, help="folder with <kind>/ router folders")
    p.add_argument("--kinds", default="text,hidden")
    p.add_argument("--out", required=True, help="output path stem (.md, .json)")
    p.add_argument("--chat", action="store_true",
                   help="also route each prompt in its chat-templated form (rows '<kind>, chat')")
    p.add_argument("--labels", nargs="*", default=None,
                   help="train label JSONs: adds the task router (best set per task on these "
                   "rows) and paired intervals against it")
    args = p.parse_args(argv)

    from vllm_pudding.artifact import base_model, load_pudding_dir
    from vllm_pudding.router.runtime import Router
    from vllm_pudding.router.spec import load_spec
    from vllm_pudding.router.text import default_encoder_dir

    pdir = Path(args.pudding_dir)
    pool = load_pudding_dir(pdir)
    base = base_model(pdir)
    runs, meta = load_runs([Path(x) for x in args.results])
    set_runs = [r for r in runs if r.label.startswith("set")]
    tasks = list(set_runs[0].examples)
    texts = validation_texts(tasks, meta.get("n", 1000), meta.get("seed", 0),
                             {t: [e.doc_id for e in set_runs[0].examples[t]] for t in tasks})
    rows, extra = [], {}
    for kind in args.kinds.split(","):
        rdir = Path(args.routers) / kind
        spec = load_spec(rdir, pool.omission_sets, check_encoder=False)
        router = Router(rdir, spec, base, default_encoder_dir() if kind == "text" else None,
                        routable=pool.routable_sets)
        choice = route_cached(router, texts)
        t0 = time.perf_counter()
        sample = [x for t in tasks for x in texts[t][:20]]
        router.route(sample)  # timing: one batched call, as the front end makes
        secs = (time.perf_counter() - t0) / len(sample) * sum(len(v) for v in texts.values())
        label = f"pudding-{kind}"
        rows.append(routed_run(label, runs, choice))
        if args.chat:
            from transformers import AutoTokenizer

            from vllm_pudding.router.train import chat_texts

            chat = chat_texts(texts, AutoTokenizer.from_pretrained(str(base)))
            rows.append(routed_run(f"{label}, chat prompts", runs,
                                   route_cached(router, chat, chat=True)))
        n_total = sum(len(v) for v in texts.values())
        extra[label] = {"agreement_with_oracle_best": agreement(runs, choice, spec.target),
                        "set_histogram": {t: np.bincount(c, minlength=len(pool.omission_sets)).tolist()
                                          for t, c in choice.items()},
                        "route_seconds": secs, "prompts": n_total,
                        "target": spec.target, "objective": spec.objective}
    oracles = oracle_rows(runs)
    statics = [r for r in runs if r.label in ("sleb", "shortgpt") or r.label.startswith("set")]
    best_static = max(statics, key=lambda r: averages(r)["avg6"].value)
    task_row = None
    if args.labels:
        from vllm_pudding.eval.paired import task_router_run
        from vllm_pudding.router.labels import load_tables

        task_row, extra["task_router_sets"] = task_router_run(
            runs, load_tables([Path(x) for x in args.labels], len(pool.omission_sets)),
            allowed=pool.routable_sets)
    table_runs = runs + ([task_row] if task_row else []) + rows + oracles
    summary = {r.label: {"avg6": averages(r)["avg6"].value,
                         "minus_best_static": averages(r)["avg6"].value
                         - averages(best_static)["avg6"].value} for r in rows}
    md = [markdown_table(table_runs), "",
          f"Best static (best of SLEB, ShortGPT and each single pool set, by avg6): "
          f"**{best_static.label}** {averages(best_static)['avg6'].fmt()}.", ""]
    for label, s in summary.items():
        if label not in extra:  # a chat-prompt row: accuracy only
            md.append(f"- {label}: avg6 {100 * s['avg6']:.1f}, "
                      f"{100 * s['minus_best_static']:+.1f} points vs best static.")
            continue
        agr = extra[label]["agreement_with_oracle_best"]
        md.append(f"- {label}: avg6 {100 * s['avg6']:.1f}, {100 * s['minus_best_static']:+.1f} "
                  f"points vs best static; top-1 agreement with the oracle-best candidate by "
                  f"{extra[label]['target']} "
                  f"{100 * float(np.mean(list(agr.values()))):.1f}% (per task: "
                  + ", ".join(f"{t} {100 * v:.0f}%" for t, v in agr.items()) + "); "
                  + _cost(label, extra[label]))
    md += paired_lines(rows, best_static, task_row, tasks, extra)
    text = "\n".join(md) + "\n"
    out = Path(args.out)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({
        "meta": meta, "best_static": best_static.label, "summary": summary, "routers": extra,
        "rows": {r.label: {t: msgspec.to_builtins(x) for t, x in r.tasks.items()}
                 for r in table_runs}}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
