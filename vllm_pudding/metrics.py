"""Prometheus series per omission set, served on `vllm serve`'s `/metrics`.

vLLM builds one `StatLoggerManager` per `AsyncLLM` (the `vllm serve` front end): its own
`PrometheusStatLogger` plus every class of the `vllm.stat_logger_plugins` entry point
group, here `PuddingStatLogger`. Each engine step's `IterationStats` reaches `record()`;
the `request_metrics` patch puts one `FinishedSet` per finished request on it. Series,
labelled `model_name` and `engine` like vLLM's own:

    vllm:pudding_requests_total{set="3",routed="true"}         finished requests
    vllm:pudding_prompt_tokens_total{set="3",routed="true"}    their prompt tokens
    vllm:pudding_generation_tokens_total{set="3",routed="true"} their generated tokens
    vllm:pudding_routing_time_seconds{router="hidden"}          histogram, one observation
        per routed request: the duration of the router call that chose its set (the
        worker's routing step for the in-engine hidden router, the front end's batched
        call for the text router)

A request is counted when it finishes (any finish reason), like
`vllm:request_success_total`; routed="false" means pinned by `pudding_set`, or the
default set of a dir without a router. Every set's series exist from the start (at 0).
A model without a `pudding` section gets no series. Offline `LLM` engines do not load
stat logger plugins (vLLM loads them for `AsyncLLM` only).
"""

from __future__ import annotations

from vllm.v1.metrics.loggers import AggregateStatLoggerBase

from vllm_pudding.config import from_hf_config
from vllm_pudding.patches.request_metrics import FINISHED_ATTR

REQUESTS = "vllm:pudding_requests"  # prometheus_client adds _total to counters
PROMPT_TOKENS = "vllm:pudding_prompt_tokens"
GENERATION_TOKENS = "vllm:pudding_generation_tokens"
ROUTING_TIME = "vllm:pudding_routing_time_seconds"
ROUTING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)


class PuddingStatLogger(AggregateStatLoggerBase):
    """Per-set request, token and routing-time series for every engine of one front end."""

    def __init__(self, vllm_config, engine_indexes: list[int] | None = None):
        self.engine_indexes = engine_indexes or [0]
        self.pool = from_hf_config(vllm_config.model_config.hf_config)
        self.model_name = vllm_config.model_config.served_model_name
        self.router = self.pool.router.kind if self.pool and self.pool.router else None
        self.series: dict | None = None

    def log_engine_initialized(self) -> None:
        # Registered here, not in __init__: vLLM builds plugin loggers before its own
        # PrometheusStatLogger, whose __init__ unregisters every "vllm:" collector.
        self._register()

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
        finished = getattr(iteration_stats, FINISHED_ATTR, None)
        if not finished or self.pool is None:
            return
        if self.series is None:
            self._register()
        engine = str(engine_idx)
        for f in finished:
            labels = (self.model_name, engine, str(f.set_id), _flag(f.routed))
            self.series["requests"].labels(*labels).inc()
            self.series["prompt"].labels(*labels).inc(f.prompt_tokens)
            self.series["generation"].labels(*labels).inc(f.generation_tokens)
            if f.routed and f.route_seconds is not None and self.router is not None:
                self.series["routing"].labels(self.model_name, engine,
                                              self.router).observe(f.route_seconds)

    def _register(self) -> None:
        if self.pool is None:
            return
        from prometheus_client import Counter, Histogram

        _unregister({REQUESTS, PROMPT_TOKENS, GENERATION_TOKENS, ROUTING_TIME})
        per_set = ["model_name", "engine", "set", "routed"]
        self.series = {
            "requests": Counter(REQUESTS, "Finished requests per PuDDing omission set "
                                "(routed: chosen by the router; else pinned or default).",
                                per_set),
            "prompt": Counter(PROMPT_TOKENS, "Prompt tokens of finished requests per "
                              "PuDDing omission set.", per_set),
            "generation": Counter(GENERATION_TOKENS, "Generated tokens of finished requests "
                                  "per PuDDing omission set.", per_set),
            "routing": Histogram(ROUTING_TIME, "Per routed request: seconds of the router "
                                 "call that chose its PuDDing omission set.",
                                 ["model_name", "engine", "router"], buckets=ROUTING_BUCKETS),
        }
        routed = [False, True] if self.router else [False]
        for engine in map(str, self.engine_indexes):  # every series visible from the start
            for set_id in range(len(self.pool.omission_sets)):
                for flag in routed:
                    for key in ("requests", "prompt", "generation"):
                        self.series[key].labels(self.model_name, engine, str(set_id),
                                                _flag(flag))
            if self.router:
                self.series["routing"].labels(self.model_name, engine, self.router)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _unregister(names: set[str]) -> None:
    """Drops our collectors left by an earlier logger (a second engine in this process),
    as vLLM's own `unregister_vllm_metrics` does for its series."""
    from prometheus_client import REGISTRY

    for collector in list(REGISTRY._collector_to_names):
        if getattr(collector, "_name", None) in names:
            REGISTRY.unregister(collector)
