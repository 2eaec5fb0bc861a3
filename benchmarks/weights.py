"""Weight memory each engine really holds, read from the engine's own parameters.

Why from the engine: PuDDing builds a layer only if some pool set keeps it, so its
resident weights depend on the pool, not on the checkpoint's size. Counting the live
`model.parameters()` in the worker (`llm.apply_model`, which pickles a module-level
function and needs VLLM_ALLOW_INSECURE_SERIALIZATION=1 before the engine starts)
measures what vLLM loaded, tied embeddings counted once. On CPU, vLLM hands each
linear layer's weight to a prepacked GEMM kernel and leaves an empty `weight`
parameter; such a weight counts at its logical shape (rows x cols x dtype size),
which is what the kernel holds (up to packing padding).

A pool with no layer omitted by every set keeps every layer, so its weights equal
dense; `shared_core_savings` says what a pool whose sets share c omitted layers would
save (c x one decoder layer; c = k is the static checkpoint).
"""

from __future__ import annotations

import re

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def param_bytes(model) -> dict:
    """Run inside the worker: bytes of parameters in total and per decoder layer index."""
    per_layer: dict[int, int] = {}
    total, seen = 0, set()
    for prefix, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:  # tied tensors (e.g. lm_head = embeddings) count once
                continue
            seen.add(id(p))
            size = _held_bytes(module, name, p)
            total += size
            match = _LAYER.search(f"{prefix}.{name}")
            if match:
                per_layer[int(match.group(1))] = per_layer.get(int(match.group(1)), 0) + size
    return {"total": total, "per_layer": per_layer}


def _held_bytes(module, name: str, p) -> int:
    """A parameter's bytes; for a CPU linear whose weight vLLM moved into a prepacked
    GEMM kernel (oneDNN / sgl, leaving an empty `weight`), the weight's logical size."""
    rows = getattr(module, "output_size_per_partition", None)
    cols = getattr(module, "input_size_per_partition", None)
    if name == "weight" and p.numel() == 0 and rows and cols:
        return rows * cols * p.element_size()
    return p.numel() * p.element_size()


def engine_weights(llm) -> dict:
    """Bytes of parameters held by the engine's model (first worker)."""
    return llm.apply_model(param_bytes)[0]


def shared_core_savings(dense: dict, k: int) -> dict[str, int]:
    """Bytes a pool saves when all its sets omit the same c layers, for c = 0..k (keys
    are strings, as JSON keeps them)."""
    layer = max(dense["per_layer"].values())
    return {str(c): c * layer for c in range(k + 1)}


def weights_report(engines: dict, k: int, shared_core: int) -> dict:
    """Per-engine bytes, pudding's and static's fraction of dense, and the shared-core table."""
    held = {name: engine_weights(llm) for name, llm in engines.items()}
    dense = held["dense"]
    return {
        "bytes": {name: w["total"] for name, w in held.items()},
        "layers_built": {name: len(w["per_layer"]) for name, w in held.items()},
        "vs_dense": {name: w["total"] / dense["total"] for name, w in held.items()},
        "decoder_layer_bytes": max(dense["per_layer"].values()),
        "omitted_by_all": shared_core,
        "shared_core_savings_bytes": shared_core_savings(dense, k),
    }
