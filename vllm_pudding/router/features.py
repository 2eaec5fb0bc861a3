"""Router features for lists of prompt texts, cached on disk by content hash.

Features depend only on (router kind, encoder, texts, max tokens, pooling), so the
train/held-out/validation features are computed once and every head variant reuses them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch

from vllm_pudding.default_model import cache_dir


def make_encoder(kind: str, *, encoder_dir: Path | None = None, model_dir: Path | None = None,
                 prefix_layers: int | None = None, max_tokens: int = 128,
                 pooling: str = "mean"):
    if kind == "text":
        from vllm_pudding.router.text import TextEncoder, default_encoder_dir

        return TextEncoder(encoder_dir or default_encoder_dir(), max_tokens=max_tokens)
    if kind == "hidden":
        from vllm_pudding.router.hidden import PrefixEncoder

        return PrefixEncoder(model_dir, prefix_layers, max_tokens, pooling)
    raise ValueError(f"unknown router kind {kind!r}; known: text, hidden")


def feature_key(*, kind: str, max_tokens: int, pooling: str, prefix_layers: int | None,
                model_dir: Path | None, split: str, chat: bool = False) -> dict:
    """The cache key of one feature table: everything its features depend on.

    One shape for every tool (router training, the validation report, serving-pool
    selection), so each reuses what the others computed.
    """
    hidden = kind == "hidden"
    return {"kind": kind, "max_tokens": max_tokens, "pooling": pooling,
            "prefix_layers": prefix_layers if hidden else None,
            "source": str(model_dir) if hidden else "minilm-l6", "split": split, "chat": chat}


def spec_feature_key(spec, model_dir: Path | None, split: str, chat: bool = False) -> dict:
    """`feature_key` of an installed router (its RouterSpec)."""
    return feature_key(kind=spec.kind, max_tokens=spec.max_tokens, pooling=spec.pooling,
                       prefix_layers=spec.prefix_layers, model_dir=model_dir, split=split,
                       chat=chat)


def cached_features(encoder, texts: Sequence[str], key: dict) -> torch.Tensor:
    digest = hashlib.sha256(json.dumps([key, list(texts)]).encode()).hexdigest()[:20]
    path = cache_dir() / "router" / f"features-{key.get('kind')}-{digest}.pt"
    if path.is_file():
        return torch.load(path)
    feats = encoder(list(texts))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(feats, path)
    return feats
