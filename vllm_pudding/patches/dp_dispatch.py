"""Patch: data-parallel `vllm serve` sends each request to a replica of its set's group.

What: wraps `DPLBAsyncMPClient.__init__` and `.get_core_engine_for_request` (the front
end's internal load balancer of `vllm serve DIR --data-parallel-size N`). For a PuDDing
model, the client gets a `SetAffineDispatcher` (vllm_pudding/dispatch/policy.py) over its
N engines; a request whose set is known before dispatch (`extra_args["pudding_set"]`:
pinned by the caller, chosen by a text router in the front end, or the default set of a
dir without a router) goes to the least-loaded engine of its set's group, spilling out
of the group only as the policy allows. Requests whose set is not known yet (the hidden
router decides in the engine), pooling requests, requests that name a
`data_parallel_rank` and a session's follow-up inputs keep vLLM's own choice.
Counters, on `/metrics` (summed over the API servers):
    vllm:pudding_dispatch_requests_total{engine,set,spilled}  requests the policy sent
    vllm:pudding_dispatch_group{engine,set}                   1 where the engine serves
                                                              the set in some API server
    vllm:pudding_dispatch_regroups_total                      regroups after drift
Option: `--additional-config '{"pudding_dispatch": {...}}'` takes the `DispatchOptions`
fields; `"pudding_dispatch": "vllm"` keeps vLLM's own (set-blind) balancing.
Why: a decode step costs about the union of the layers its rows keep, so replicas that
each serve a group of sets decode faster than replicas that each see every set; vLLM's
balancer looks only at queue lengths.
How: the policy picks an engine index from the same load figure vLLM uses (the larger of
the coordinator's waiting + running and this client's own in-flight count); the wrapper
sets it as the request's `data_parallel_rank` for the original call (which then does
vLLM's bookkeeping for aborts and in-flight counts) and clears it again before the
request is sent. Each API server process has its own dispatcher (same groups from the
same prior; each regroups on the traffic it sees).
Removable when: vLLM lets a plugin choose the data-parallel engine per request.
"""

from __future__ import annotations

from vllm.logger import init_logger

from vllm_pudding.patches import wrap

logger = init_logger(__name__)

CONFIG_KEY = "pudding_dispatch"
VLLM_BALANCING = "vllm"
REQUESTS = "vllm:pudding_dispatch_requests"
GROUP = "vllm:pudding_dispatch_group"
REGROUPS = "vllm:pudding_dispatch_regroups"


def apply() -> None:
    from vllm.v1.engine.core_client import DPLBAsyncMPClient

    wrap(DPLBAsyncMPClient, "__init__", _wrap_init)
    wrap(DPLBAsyncMPClient, "get_core_engine_for_request", _wrap_choice)


def configured_options(additional_config):
    """DispatchOptions from vLLM's additional_config; None for vLLM's own balancing."""
    from vllm_pudding.dispatch.policy import DispatchOptions

    raw = (additional_config or {}).get(CONFIG_KEY) if isinstance(additional_config, dict) \
        else None
    if raw == VLLM_BALANCING:
        return None
    if raw is not None and not isinstance(raw, dict):
        raise ValueError(f"additional_config {CONFIG_KEY!r} must be {VLLM_BALANCING!r} or an "
                         f"object of dispatch options, got {raw!r}")
    return DispatchOptions(**(raw or {}))


def make_dispatcher(vllm_config, num_engines: int):
    """The client's dispatcher, or None (not a PuDDing model, or vLLM's balancing asked)."""
    from vllm_pudding.config import from_hf_config
    from vllm_pudding.dispatch.policy import SetAffineDispatcher

    hf_config = vllm_config.model_config.hf_config
    pool = from_hf_config(hf_config)
    if pool is None:
        return None
    options = configured_options(vllm_config.additional_config)
    if options is None:
        return None
    num_layers = hf_config.get_text_config().num_hidden_layers
    kept = [frozenset(i for i, k in enumerate(row) if k) for row in pool.kept_mask(num_layers)]
    dispatcher = SetAffineDispatcher(kept, num_engines, options)
    logger.info("vllm-pudding: set-affine dispatch over %d engines; sets per engine: %s",
                num_engines, [sorted(s) for s in dispatcher.replica_sets])
    return dispatcher


def request_set(request) -> int | None:
    """The set a request runs with, when the front end knows it before dispatch."""
    from vllm_pudding.config import SET_ARG

    params = getattr(request, "sampling_params", None)
    set_id = (getattr(params, "extra_args", None) or {}).get(SET_ARG)
    return set_id if isinstance(set_id, int) and not isinstance(set_id, bool) else None


def _wrap_init(original):
    def __init__(self, vllm_config, *args, **kwargs):
        original(self, vllm_config, *args, **kwargs)
        self.pudding_dispatcher = make_dispatcher(vllm_config, len(self.core_engines))
        # Made on the first dispatch: vLLM's Prometheus logger, built after this client,
        # unregisters every "vllm:" collector it finds.
        self.pudding_metrics = None

    return __init__


def _wrap_choice(original):
    def get_core_engine_for_request(self, request):
        dispatcher = getattr(self, "pudding_dispatcher", None)
        set_id = request_set(request)
        if dispatcher is None or set_id is None or request.data_parallel_rank is not None \
                or request.request_id in self.reqs_in_flight \
                or len(self.core_engines) != dispatcher.num_replicas:
            return original(self, request)
        loads = [max(self.client_count * self.engine_inflight[engine], int(c[0] + c[1]))
                 for engine, c in zip(self.core_engines, self.lb_engines)]
        spills_before = sum(dispatcher.spills)
        index = dispatcher.choose(set_id, loads)
        spilled = sum(dispatcher.spills) > spills_before
        if dispatcher.observe(set_id):
            logger.info("vllm-pudding: set frequencies drifted; sets per engine now: %s",
                        [sorted(s) for s in dispatcher.replica_sets])
        self.lb_engines[index][0] += self.client_count  # as vLLM does between stats updates
        request.data_parallel_rank = index
        try:
            engine = original(self, request)
        finally:
            request.data_parallel_rank = None
        if self.pudding_metrics is None:
            self.pudding_metrics = _Metrics(self.vllm_config, dispatcher)
        self.pudding_metrics.record(index, set_id, spilled, dispatcher)
        return engine

    return get_core_engine_for_request


class _Metrics:
    """The dispatch counters on the front end's Prometheus registry."""

    def __init__(self, vllm_config, dispatcher):
        from prometheus_client import Counter, Gauge

        self.model = vllm_config.model_config.served_model_name
        names = {REQUESTS, GROUP, REGROUPS}
        _unregister(names)
        self.requests = Counter(REQUESTS, "Requests the set-affine dispatch sent to each "
                                "data-parallel engine, per PuDDing set (spilled: outside "
                                "the engine's group).",
                                ["model_name", "engine", "set", "spilled"])
        self.group = Gauge(GROUP, "1 where the data-parallel engine serves the PuDDing set "
                           "in the set-affine dispatch.", ["model_name", "engine", "set"],
                           multiprocess_mode="max")
        self.regroups = Counter(REGROUPS, "Regroups of the set-affine dispatch after the "
                                "set frequencies drifted.", ["model_name"])
        self.regroups.labels(self.model)
        self._regroups = dispatcher.regroups
        self._show_groups(dispatcher)

    def record(self, engine: int, set_id: int, spilled: bool, dispatcher) -> None:
        self.requests.labels(self.model, str(engine), str(set_id),
                             "true" if spilled else "false").inc()
        if dispatcher.regroups != self._regroups:
            self.regroups.labels(self.model).inc(dispatcher.regroups - self._regroups)
            self._regroups = dispatcher.regroups
            self._show_groups(dispatcher)

    def _show_groups(self, dispatcher) -> None:
        for engine, sets in enumerate(dispatcher.replica_sets):
            for set_id in range(len(dispatcher.kept_layers)):
                self.group.labels(self.model, str(engine), str(set_id)).set(
                    1.0 if set_id in sets else 0.0)


def _unregister(names: set[str]) -> None:
    from prometheus_client import REGISTRY

    for collector in list(REGISTRY._collector_to_names):
        if getattr(collector, "_name", None) in names:
            REGISTRY.unregister(collector)
