"""The default pudding model dir: SmolLM2-135M-Instruct with the committed pool.

Built once into `<cache>/pudding/<name>/` (symlinks to the converted model, so
it costs no disk) and reused. The pool comes from a committed JSON file: no
search runs at demo, test or benchmark time. The file is the calibrated pool of
`python -m vllm_pudding.search` (10 sets, k = 7); `smollm2_135m_provisional.json`
is the earlier stand-in that the first benchmarks and evaluation used.

Command (builds if needed, prints the path)::

    python -m vllm_pudding.default_pudding
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from vllm_pudding.artifact import build_pudding_dir, load_pudding_dir
from vllm_pudding.config import PuddingConfig
from vllm_pudding.default_model import cache_dir, ensure_default_model

POOL_FILE = "smollm2_135m_k7.json"


def default_pool() -> tuple[PuddingConfig, dict]:
    """The committed pool as a validated config, plus its provenance metadata."""
    raw = json.loads(resources.files("vllm_pudding.pools").joinpath(POOL_FILE).read_text())
    pool = PuddingConfig(omission_sets=[s["layers"] for s in raw["sets"]],
                         provisional=bool(raw.get("provisional", False)))
    pool.check(raw["num_layers"])
    return pool, {"pool_file": POOL_FILE, "pool": raw}


def ensure_default_pudding_dir() -> Path:
    """Path of the default pudding dir, building it when absent or stale."""
    pool, meta = default_pool()
    out = cache_dir() / "pudding" / f"SmolLM2-135M-Instruct-{Path(POOL_FILE).stem}"
    if out.exists():
        try:
            if load_pudding_dir(out) == pool:
                return out
        except ValueError:
            pass  # a stale or broken dir is rebuilt below
    return build_pudding_dir(ensure_default_model(), pool, out, meta=meta)


if __name__ == "__main__":
    print(ensure_default_pudding_dir())
