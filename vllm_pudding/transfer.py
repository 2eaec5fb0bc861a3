"""Host-to-device copies of the per-step depth plan: one per step, none in the layer loop.

Why: on a GPU each small `.to(device)` of an index array is a copy the host waits on,
and a plan needs several arrays per distinct row mask (token indices, rows, query
starts, KV-slot offsets). So the plan builds every array on the host and moves them
all in one copy (`to_device`); the layer loop then only indexes device tensors. A
step the in-engine router decides adds the copies the decision needs (its features'
indices, then the re-plan). The counters let CPU tests check this, where a stray copy
costs nothing and would creep back unnoticed.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

COPIES = {"plan": 0, "route": 0, "in_layer_loop": 0}
"""Calls of `to_device` per purpose, and how many happened inside the layer loop."""

_in_layer_loop = False


@contextmanager
def layer_loop():
    """Marks the running layer call: a copy made here is counted as a defect."""
    global _in_layer_loop
    _in_layer_loop = True
    try:
        yield
    finally:
        _in_layer_loop = False


def to_device(arrays: list[np.ndarray], device: torch.device, purpose: str) -> list[torch.Tensor]:
    """One copy of all `arrays` (any int dtype, moved as int64) to `device`, same shapes."""
    COPIES[purpose] += 1
    COPIES["in_layer_loop"] += _in_layer_loop
    if not arrays:
        return []
    flat = np.concatenate([np.asarray(a, dtype=np.int64).ravel() for a in arrays])
    host = torch.from_numpy(flat)
    if device.type != "cpu":
        # A pinned staging copy lets the transfer run asynchronously; PyTorch's caching
        # host allocator keeps the block until the copy has run.
        host = host.pin_memory().to(device, non_blocking=True)
    parts = torch.split(host, [a.size for a in arrays])
    return [p.view(np.shape(a)) for p, a in zip(parts, arrays)]
