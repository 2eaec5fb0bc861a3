"""Held-out train-row accuracy of the committed router heads, with today's metrics.

    .venv/bin/python benchmarks/router_heldout.py \\
        --labels benchmarks/results/eval/labels_train640.json.gz \\
        --out benchmarks/results/eval/router_heldout_k7.json          # ~15 min cold, 1 core

`python -m vllm_pudding.router.train` reports every head variant on the held-out train
rows (the last 20% per task) when it trains them; only the chosen head per kind is kept
(`vllm_pudding/routers/smollm2_135m_k7/<kind>/`). This re-scores those committed heads and
the report's non-learned baselines on the same rows, in raw and chat-templated form, from
the stored label scores (no engine): what the training report shows for them when a
metric's definition changes (acc_norm's divisor, issue 17). Router features are cached
(`router.features.cached_features`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pudding-dir", default=None, help="default: the default pudding dir")
    p.add_argument("--labels", nargs="+", required=True)
    p.add_argument("--routers", default="vllm_pudding/routers/smollm2_135m_k7")
    p.add_argument("--holdout", type=float, default=0.2)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from transformers import AutoTokenizer

    from vllm_pudding.artifact import base_model, load_pudding_dir
    from vllm_pudding.default_pudding import ensure_default_pudding_dir
    from vllm_pudding.router.features import cached_features, spec_feature_key
    from vllm_pudding.router.labels import load_tables
    from vllm_pudding.router.runtime import Router
    from vllm_pudding.router.spec import load_spec
    from vllm_pudding.router.text import default_encoder_dir
    from vllm_pudding.router.train import (Rows, baselines, chat_texts, mean, split_rows,
                                           train_texts)

    pdir = Path(args.pudding_dir) if args.pudding_dir else ensure_default_pudding_dir()
    pool, base = load_pudding_dir(pdir), base_model(pdir)
    tables = load_tables([Path(x) for x in args.labels], len(pool.omission_sets))
    texts, split = train_texts(tables), split_rows(tables, args.holdout)
    forms = {"raw": (texts, False),
             "chat": (chat_texts(texts, AutoTokenizer.from_pretrained(str(base))), True)}
    out = {"labels": args.labels, "holdout": args.holdout,
           "held_out_rows": {t: len(split[t][1]) for t in tables}, "heads": {}}
    for kind in ("hidden", "text"):
        rdir = Path(args.routers) / kind
        spec = load_spec(rdir, pool.omission_sets, check_encoder=False)
        router = Router(rdir, spec, base, default_encoder_dir() if kind == "text" else None)
        res = {"target": spec.target, "objective": spec.objective}
        for form, (tx, chat) in forms.items():
            key = spec_feature_key(spec, base, "train", chat)
            feats = {t: cached_features(router.encode, tx[t], key) for t in tables}
            train, held = Rows(tables, feats, split, 0), Rows(tables, feats, split, 1)
            with torch.no_grad():
                acc = held.routed_acc(router.head(held.x).argmax(-1).numpy())
            res[form] = {"acc": acc, "avg6": mean(acc)}
            if "baselines" not in out and form == "raw":
                out["baselines"] = {k: {**v, "avg6": mean(v["acc"])} for k, v in
                                    baselines(train, held, len(pool.omission_sets)).items()}
        out["heads"][kind] = res
        print(f"{kind}: held-out avg6 raw {100 * res['raw']['avg6']:.1f}, "
              f"chat {100 * res['chat']['avg6']:.1f}", flush=True)
    for name, b in out["baselines"].items():
        print(f"{name}: {100 * b['avg6']:.1f}")
    Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
