"""A pudding dir pinned to one pool set: every request that names no set runs that set.

    pudding pin "$(pudding default-dir)" --set 2 /tmp/pudding-set2
    vllm serve /tmp/pudding-set2 ...     # or LLM(model=...), lm-eval's vllm model, ...

Why: a set is pinned per request through `pudding_set` (`SamplingParams.extra_args`,
`vllm_xargs`), which clients such as lm-evaluation-harness cannot send; their requests
are routed. The pinned dir keeps the source's pool (set ids keep their meaning, and an
explicit `pudding_set` still works) with `default_set` = N and no router, so a request
without `pudding_set` gets set N. Weights and tokenizer are symlinks to the base model
(`artifact.build_pudding_dir`); `pudding_meta.json` says where the dir came from
(`pinned_from`, `pinned_set`, its omitted layers, the dropped router, the source's meta).
"""

from __future__ import annotations

import json
from pathlib import Path

from vllm_pudding.artifact import META_FILE, base_model, build_pudding_dir, load_pudding_dir


def pin_pudding_dir(src: Path, set_id: int, out: Path) -> Path:
    """Writes `out`: `src`'s pool with default set `set_id` and no router. ValueError on a
    set id outside the pool, or an `out` that is `src` or an existing non-pudding folder."""
    src, out = Path(src).resolve(), Path(out)
    pool = load_pudding_dir(src)
    n = len(pool.omission_sets)
    if isinstance(set_id, bool) or not isinstance(set_id, int) or not 0 <= set_id < n:
        raise ValueError(f"--set {set_id!r}: not a set id of the pool of {src} (0..{n - 1})")
    if out.resolve() == src:
        raise ValueError(f"{out}: the output dir is the source dir")
    if out.exists() and not (out / META_FILE).is_file():
        raise ValueError(f"{out}: exists and is not a pudding dir; not overwriting it")
    source_meta = json.loads((src / META_FILE).read_text()) if (src / META_FILE).is_file() else {}
    # No router in the pinned dir, so nothing is routed: routable_sets does not apply.
    pinned = pool.model_copy(update={"default_set": set_id, "router": None,
                                     "routable_sets": None})
    meta = {"pinned_from": str(src), "pinned_set": set_id,
            "pinned_layers": list(pool.omission_sets[set_id]),
            "source_router": pool.router.model_dump() if pool.router else None,
            "source_meta": {k: v for k, v in source_meta.items()
                            if k not in ("base_model", "created")}}
    return build_pudding_dir(base_model(src), pinned, out, meta=meta)
