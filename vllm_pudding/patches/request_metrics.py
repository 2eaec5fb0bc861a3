"""Patch: each finished request's stats say which set it ran with, for the per-set metrics.

What: wraps `OutputProcessor._update_stats_from_finished` (front end). After vLLM
records a finished request in the step's `IterationStats`, a `FinishedSet` (set id,
routed or pinned, prompt and generated token counts, routing seconds) is appended to
`iteration_stats.pudding_finished` for requests of a PuDDing model.
Why: vLLM hands a stat logger only `SchedulerStats` / `IterationStats`, whose
`FinishedRequestStats` carry no per-request model metadata; the front end's
`RequestState` knows the set (`auto_routing`, `engine_routes`). `vllm_pudding.metrics`
(a `vllm.stat_logger_plugins` entry point) turns these records into Prometheus series.
Removable when: vLLM's finished-request stats can carry request metadata to stat loggers.
"""

from __future__ import annotations

from typing import NamedTuple

from vllm_pudding.patches import wrap

FINISHED_ATTR = "pudding_finished"
"""IterationStats attribute: the FinishedSet records of requests that finished this step."""


class FinishedSet(NamedTuple):
    set_id: int
    routed: bool
    prompt_tokens: int
    generation_tokens: int
    route_seconds: float | None
    """Duration of the router call that chose the set (None: pinned, or no timing)."""


def apply() -> None:
    from vllm.v1.engine.output_processor import OutputProcessor

    wrap(OutputProcessor, "_update_stats_from_finished", _wrap)


def _wrap(original):
    def _update_stats_from_finished(self, req_state, finish_reason, iteration_stats, *args,
                                    **kwargs):
        original(self, req_state, finish_reason, iteration_stats, *args, **kwargs)
        set_id = getattr(req_state, "pudding_set", None)
        if iteration_stats is None or set_id is None:
            return
        record = FinishedSet(
            set_id=int(set_id), routed=bool(getattr(req_state, "pudding_routed", False)),
            prompt_tokens=int(req_state.prompt_len or 0),
            generation_tokens=int(req_state.stats.num_generation_tokens),
            route_seconds=getattr(req_state, "pudding_route_seconds", None))
        iteration_stats.__dict__.setdefault(FINISHED_ATTR, []).append(record)

    return _update_stats_from_finished
