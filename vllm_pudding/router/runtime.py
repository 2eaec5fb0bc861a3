"""A pudding dir's router, loaded once per process, routing batches of prompt texts.

The front end (patches/auto_routing.py) calls `router_for(model_dir, pool)` for
every request that names no set; the first call loads and validates the artifact
(errors name the file), later calls reuse it. Timings are kept per process so
benchmarks can report the router's share of request time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from vllm_pudding.config import PuddingConfig
from vllm_pudding.router.head import RouterHead, pick
from vllm_pudding.router.spec import HEAD_FILE, RouterSpec, load_spec


@dataclass
class RouterStats:
    calls: int = 0
    prompts: int = 0
    seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)


class Router:
    """Prompt texts -> set ids (argmax of the head's per-set scores)."""

    def __init__(self, router_dir: Path, spec: RouterSpec, model_dir: Path,
                 encoder_dir: Path | None = None, routable: Sequence[int] | None = None):
        from safetensors.torch import load_file

        self.spec, self.stats, self.model_dir = spec, RouterStats(), model_dir
        self.head = RouterHead(spec.feature_dim, len(spec.omission_sets), spec.head_hidden)
        try:
            self.head.load_state_dict(load_file(str(router_dir / HEAD_FILE)))
        except (RuntimeError, KeyError) as e:
            raise ValueError(f"{router_dir / HEAD_FILE}: does not match router.json "
                             f"(feature_dim {spec.feature_dim}, head_hidden "
                             f"{spec.head_hidden}): {e}") from None
        self.head.eval()
        self.routable = None if routable is None else torch.tensor(list(routable))
        self.encode = _encoder(encoder_dir or router_dir / (spec.encoder or ""), spec, model_dir)
        self._lock = threading.Lock()

    def scores(self, texts: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            return self.head(self.encode(list(texts)))

    def route(self, texts: Sequence[str]) -> list[int]:
        return self._route(self.encode, list(texts))

    def route_ids(self, prompts: Sequence[Sequence[int]]) -> list[int]:
        """Token-id prompts, as the engine sees them; hidden routers only (a text router's
        encoder has its own tokenizer: give it the text)."""
        encode_ids = getattr(self.encode, "encode_ids", None)
        if encode_ids is None:
            raise ValueError(f"a {self.spec.kind} router routes texts, not token ids")
        return self._route(encode_ids, [list(p) for p in prompts])

    def _route(self, encode, prompts: list) -> list[int]:
        if not prompts:
            return []
        with self._lock:  # one batched call at a time; torch ops are not reentrant-friendly
            t0 = time.perf_counter()
            with torch.no_grad():
                ids = pick(self.head(encode(prompts)), self.routable).tolist()
            self.stats.calls += 1
            self.stats.prompts += len(prompts)
            self.stats.seconds += time.perf_counter() - t0
            self.stats.batch_sizes.append(len(prompts))
        return ids


def _encoder(encoder_dir: Path, spec: RouterSpec, model_dir: Path):
    from vllm_pudding.router.features import make_encoder

    return make_encoder(spec.kind, encoder_dir=encoder_dir, model_dir=model_dir,
                        prefix_layers=spec.prefix_layers, max_tokens=spec.max_tokens,
                        pooling=spec.pooling)


def load_router(model_dir: Path, pool: PuddingConfig) -> Router | None:
    """The pool's router (None when the pudding dir names none); ValueError names the file."""
    if pool.router is None:
        return None
    model_dir = Path(model_dir)
    router_dir = model_dir / pool.router.path
    spec = load_spec(router_dir, pool.omission_sets)
    if spec.kind != pool.router.kind:
        raise ValueError(f"{router_dir / 'router.json'}: kind {spec.kind!r} but config.json "
                         f"names a {pool.router.kind!r} router")
    return Router(router_dir, spec, model_dir, routable=pool.routable_sets)


_ROUTERS: dict[str, Router | None] = {}
_LOAD_LOCK = threading.Lock()


def router_for(model_dir: str | Path, pool: PuddingConfig) -> Router | None:
    key = f"{Path(model_dir).resolve()}|{pool.router}"
    with _LOAD_LOCK:
        if key not in _ROUTERS:
            _ROUTERS[key] = load_router(Path(model_dir), pool)
        return _ROUTERS[key]


def router_stats() -> dict[str, RouterStats]:
    """Per loaded router (keyed by model dir), its call counts and seconds."""
    return {k: r.stats for k, r in _ROUTERS.items() if r is not None}
