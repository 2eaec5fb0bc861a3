"""The hidden-state router inside the engine: decides on the first prefill chunk.

Every candidate keeps layers 0..p-1, so those layers run identically whatever a
request is routed to, and they share KV slots 0..p-1 (a slot is a kept layer's
rank). A request that names no set therefore enters its first step with a
placeholder set; right after layer p-1 the model pools the residual stream of
that chunk's tokens (the first `max_tokens`, as in training), the head scores the
candidates, and the request runs its chosen set from layer p on, for the rest of
this step and every later one. Zero extra model compute: no second model, no
second tokenizer, the head is a small MLP.

Features match `router.hidden.PrefixEncoder` (what the head was trained on):
the residual stream after layer p-1, before any norm; vLLM's fused layers carry it
as `hidden + residual`. A prompt longer than the first chunk is routed on that
chunk (a chunk of at least `max_tokens` tokens sees exactly the training view).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vllm_pudding.config import PuddingConfig
from vllm_pudding.router.head import RouterHead, pick
from vllm_pudding.router.hidden import common_prefix
from vllm_pudding.router.spec import HEAD_FILE, RouterSpec, load_spec


class EngineRouter:
    """Pooled prefix states of a step's unrouted rows -> set ids."""

    def __init__(self, spec: RouterSpec, head: RouterHead, device: torch.device,
                 routable: list[int] | None = None):
        self.spec = spec
        self.route_after = spec.prefix_layers - 1  # the last layer every set keeps
        self.head = head.to(device=device, dtype=torch.float32).eval()
        self.routable = None if routable is None else torch.tensor(routable, device=device)
        self.calls = 0
        self.prompts = 0

    @torch.no_grad()
    def decide(self, states: torch.Tensor, query_start_loc: np.ndarray,
               rows: np.ndarray) -> torch.Tensor:
        """states [tokens, d] of the whole step; rows: the batch rows to route.

        Returns the chosen set ids on the device (`depth.share_decision` reads them).
        """
        feats = pool_chunks(states, query_start_loc, rows, self.spec.max_tokens,
                            self.spec.pooling)
        self.calls += 1
        self.prompts += len(rows)
        return pick(self.head(feats), self.routable)


def pool_chunks(states: torch.Tensor, query_start_loc: np.ndarray, rows: np.ndarray,
                max_tokens: int, pooling: str) -> torch.Tensor:
    """[len(rows), d or 2d]: mean (and last) of each row's first `max_tokens` step tokens.

    The index arrays reach the device in one copy (`transfer.to_device`).
    """
    from vllm_pudding.transfer import to_device

    starts = query_start_loc[rows].astype(np.int64)
    lens = np.minimum(query_start_loc[rows + 1].astype(np.int64) - starts, max_tokens)
    seg = np.repeat(np.arange(len(rows)), lens)
    before = np.cumsum(lens) - lens
    tok = np.repeat(starts - before, lens) + np.arange(int(lens.sum()))
    device = states.device
    tok_d, seg_d, lens_d, last_d = to_device([tok, seg, lens, starts + lens - 1], device,
                                             "route")
    picked = states[tok_d].float()
    sums = torch.zeros(len(rows), states.shape[1], device=device)
    sums.index_add_(0, seg_d, picked)
    mean = sums / lens_d.to(torch.float32)[:, None]
    if pooling == "mean":
        return mean
    return torch.cat([mean, states[last_d].float()], dim=-1)


def load_engine_router(model_dir: str | Path, pool: PuddingConfig, hidden_size: int,
                       device: torch.device) -> EngineRouter | None:
    """The pudding dir's hidden router for the worker; None for text routers or none.

    Raises ValueError naming the file when the artifact does not fit the model.
    """
    if pool.router is None or pool.router.kind != "hidden":
        return None
    from safetensors.torch import load_file

    router_dir = Path(model_dir) / pool.router.path
    spec = load_spec(router_dir, pool.omission_sets)
    p = common_prefix(pool.omission_sets)
    if not 0 < spec.prefix_layers <= p:
        raise ValueError(f"{router_dir / 'router.json'}: prefix_layers={spec.prefix_layers}, "
                         f"but the pool keeps only layers 0..{p - 1} in every set")
    width = hidden_size * (2 if spec.pooling == "mean_last" else 1)
    if spec.feature_dim != width:
        raise ValueError(f"{router_dir / 'router.json'}: feature_dim={spec.feature_dim}, but "
                         f"{spec.pooling} pooling of this model's states gives {width}")
    head = RouterHead(spec.feature_dim, len(spec.omission_sets), spec.head_hidden)
    try:
        head.load_state_dict(load_file(str(router_dir / HEAD_FILE)))
    except (RuntimeError, KeyError) as e:
        raise ValueError(f"{router_dir / HEAD_FILE}: does not match router.json "
                         f"(feature_dim {spec.feature_dim}): {e}") from None
    return EngineRouter(spec, head, device, pool.routable_sets)
