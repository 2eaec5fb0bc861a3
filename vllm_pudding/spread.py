"""Spreading requests that name no set over the pool: mixed-set load for benchmarks.

    vllm bench throughput --model pudding/smollm2-135m --dataset-name random ... \\
        --additional-config '{"pudding_spread_sets": "round_robin"}'
    vllm serve pudding/smollm2-135m --additional-config '{"pudding_spread_sets": "random"}'

vLLM's benchmark CLIs send the same request body to every request (`vllm bench serve
--extra-body` is one JSON for all; `vllm bench throughput` sets no `extra_args`), so a
per-request `pudding_set` cannot come from them. With this engine option the front end
gives every request that names no `pudding_set` a set of its own before the router
would see it, as if the client had pinned it (`pudding_routed` stays false):
- `round_robin`: set ids 0, 1, 2, ... in arrival order, cycling over the pool;
- `random`: uniformly drawn, seeded by the engine's `seed` (vLLM's default 0).
An explicit `pudding_set` still wins. Off by default: for serving, leave it unset.
"""

from __future__ import annotations

import random
from typing import Any

from vllm.logger import init_logger

logger = init_logger(__name__)

CONFIG_KEY = "pudding_spread_sets"
MODES = ("round_robin", "random")


def configured_mode(additional_config: Any) -> str | None:
    """The spread mode asked for in vLLM's `additional_config`, validated; None when off."""
    if not isinstance(additional_config, dict) or additional_config.get(CONFIG_KEY) is None:
        return None
    mode = additional_config[CONFIG_KEY]
    if mode not in MODES:
        raise ValueError(f"additional_config {CONFIG_KEY!r} must be one of {list(MODES)}, "
                         f"got {mode!r}")
    return mode


class SetSpreader:
    """Hands out set ids in turn (`round_robin`) or seeded at random (`random`)."""

    def __init__(self, num_sets: int, mode: str, seed: int = 0):
        if mode not in MODES:
            raise ValueError(f"{CONFIG_KEY}: one of {list(MODES)}, got {mode!r}")
        self.num_sets, self.mode = num_sets, mode
        self._count = 0
        self._rng = random.Random(seed)

    def next(self) -> int:
        if self.mode == "random":
            return self._rng.randrange(self.num_sets)
        set_id = self._count % self.num_sets
        self._count += 1
        return set_id


def for_engine(engine) -> SetSpreader | None:
    """The spreader of an `LLM` or `AsyncLLM` front end, or None when off.

    Made on first use and kept on the front end (its turn counter lives there); the
    option is read on every request, so one set in `additional_config` later applies too.
    """
    vllm_config = getattr(engine, "vllm_config", None) or engine.llm_engine.vllm_config
    mode = configured_mode(vllm_config.additional_config)
    cached = getattr(engine, "_pudding_spreader", None)
    if cached is not None and cached[0] == mode:
        return cached[1]
    from vllm_pudding.config import from_hf_config

    pool = from_hf_config(vllm_config.model_config.hf_config)
    spreader = None
    if mode is not None and pool is not None:
        spreader = SetSpreader(len(pool.omission_sets), mode, vllm_config.model_config.seed or 0)
        logger.info("vllm-pudding: %s=%s: requests that name no pudding_set get a set of the "
                    "%d-set pool (%s), ahead of any router", CONFIG_KEY, mode,
                    len(pool.omission_sets), "in turn" if mode == "round_robin" else "seeded")
    engine._pudding_spreader = (mode, spreader)
    return spreader
