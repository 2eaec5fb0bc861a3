"""The router head: standardise features, two-layer MLP, one score per candidate set.

Training is full-batch on precomputed features (a few thousand rows), so many
variants (objective x target) fit in seconds and the choice among them is made on
held-out train rows by the quantity that matters: accuracy when routed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


class RouterHead(nn.Module):
    def __init__(self, feature_dim: int, num_sets: int, hidden: int = 256,
                 dropout: float = 0.1):
        super().__init__()
        self.register_buffer("mean", torch.zeros(feature_dim))
        self.register_buffer("std", torch.ones(feature_dim))
        self.mlp = nn.Sequential(nn.Linear(feature_dim, hidden), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, num_sets))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp((x.float() - self.mean) / self.std)

    def route(self, x: torch.Tensor) -> list[int]:
        with torch.no_grad():
            return self(x).argmax(-1).tolist()


def pick(scores: torch.Tensor, routable: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, the set with the best score among `routable` set ids (None: every set).

    `routable` lives on the scores' device (made once by the caller: no copy per call).
    """
    if routable is None:
        return scores.argmax(-1)
    return routable[scores[:, routable].argmax(-1)]


def standardise_labels(y: torch.Tensor) -> torch.Tensor:
    """Per-row centring (only the ranking of sets within a prompt matters), unit scale."""
    y = y - y.mean(dim=1, keepdim=True)
    return y / y.std().clamp_min(1e-6)


@dataclass
class FitResult:
    head: RouterHead
    best_epoch: int
    best_score: float
    history: list[tuple[int, float, float]]
    """(epoch, train loss, held-out score) at each check."""


def fit_head(x: torch.Tensor, y: torch.Tensor, objective: str,
             score: Callable[[RouterHead], float], *, hidden: int = 256,
             epochs: int = 300, check_every: int = 10, lr: float = 1e-3,
             weight_decay: float = 1e-3, temperature: float = 1.0, seed: int = 0) -> FitResult:
    """Fits a head on (x, labels y[n, sets]); keeps the state with the best held-out `score`.

    objective "mse": regress the standardised labels (the paper's loss).
    objective "soft": cross-entropy against softmax(labels / temperature) (soft labels).
    """
    if objective not in ("mse", "soft"):
        raise ValueError(f"objective must be 'mse' or 'soft', got {objective!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: extra threads only spin against the engine's
    try:
        return _fit(x, y, objective, score, hidden, epochs, check_every, lr, weight_decay,
                    temperature, seed)
    finally:
        torch.set_num_threads(threads)


def _fit(x, y, objective, score, hidden, epochs, check_every, lr, weight_decay,
         temperature, seed) -> FitResult:
    torch.manual_seed(seed)
    head = RouterHead(x.shape[1], y.shape[1], hidden)
    head.mean.copy_(x.float().mean(0))
    head.std.copy_(x.float().std(0).clamp_min(1e-6))
    target = standardise_labels(y.float())
    if objective == "soft":
        target = torch.softmax(target / temperature, dim=1)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    best = (-float("inf"), 0, None)
    history = []
    for epoch in range(1, epochs + 1):
        head.train()
        out = head(x)
        if objective == "mse":
            loss = nn.functional.mse_loss(out, target)
        else:
            loss = -(target * torch.log_softmax(out, dim=1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if epoch % check_every == 0 or epoch == epochs:
            head.eval()
            s = score(head)
            history.append((epoch, loss.item(), s))
            if s > best[0]:
                best = (s, epoch, {k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[2])
    head.eval()
    return FitResult(head=head, best_epoch=best[1], best_score=best[0], history=history)
