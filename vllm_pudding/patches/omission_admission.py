"""Patch: omission-aware admission, opt-in (`PUDDING_ADMISSION=omission`).

What: wraps `Scheduler.schedule`. Before vLLM's scan of the waiting queue (FCFS policy
only), the queue is stably re-ordered so that requests whose omission set keeps the
fewest layers beyond what the running batch already keeps come first.
Why: a decode step reads the weights of every layer some row keeps. When the engine
is saturated (more requests than `max_num_seqs`), which waiting request fills a freed
slot is free to choose: filling it with a request whose set shares the running
requests' omitted layers keeps the step's union of kept layers small without
shrinking the batch. A request is *aged* once it waited longer than
`PUDDING_ADMISSION_MAX_WAIT_S` (default 10 s) or once `PUDDING_ADMISSION_MAX_BYPASS`
(default unbounded) requests that arrived after it were admitted before it; aged
requests go first in arrival order whatever their set, so no set starves (an aged
request waits only for older ones). The bypass bound is the latency bound in units the
scheduler controls: compared with FCFS, a request is admitted at most MAX_BYPASS
admissions (plus those of the step that crossed the bound) later, whatever the load;
a time bound alone lets a request fall behind by however many admissions fit in that
time. Requests whose set is not known yet (in-engine routing) count as cost 0.
How: the running batch's core is the intersection of its requests' omitted sets (with
nothing running, the oldest waiting request's set); a waiting request's cost is the
number of core layers its set keeps. Off by default: it trades per-request latency
for throughput, and an offline batch that fits in one step gains nothing.
Removable when: vLLM's scheduler takes a pluggable admission policy.
"""

from __future__ import annotations

import os
import time

from vllm_pudding.config import SET_ARG, from_hf_config
from vllm_pudding.patches import wrap

ENV = "PUDDING_ADMISSION"
MAX_WAIT_ENV = "PUDDING_ADMISSION_MAX_WAIT_S"
MAX_BYPASS_ENV = "PUDDING_ADMISSION_MAX_BYPASS"


def apply() -> None:
    from vllm.v1.core.sched.scheduler import Scheduler

    wrap(Scheduler, "schedule", _wrap)


def _wrap(original):
    def schedule(self, *args, **kwargs):
        policy = self.__dict__.get("_pudding_admission")
        if policy is None:
            policy = self._pudding_admission = _policy(self)
        if not policy:
            return original(self, *args, **kwargs)
        bypassed = self.__dict__.setdefault("_pudding_bypassed", {})
        if len(self.waiting) > 1:
            _reorder(self.waiting, self.running, *policy, bypassed)
        waiting_before = list(self.waiting)
        output = original(self, *args, **kwargs)
        count_bypasses(waiting_before, {r.req_id for r in output.scheduled_new_reqs},
                       bypassed)
        return output

    return schedule


def _policy(scheduler) -> tuple | bool:
    """(omitted sets, max wait, max bypass) when enabled for a PuDDing model with FCFS;
    else False."""
    from collections import deque

    if os.environ.get(ENV, "fcfs") != "omission" or not isinstance(scheduler.waiting, deque):
        return False
    pool = from_hf_config(scheduler.vllm_config.model_config.hf_config)
    if pool is None:
        return False
    bypass = os.environ.get(MAX_BYPASS_ENV)
    if bypass is not None and not (bypass.isdigit() and int(bypass) > 0):
        raise ValueError(f"{MAX_BYPASS_ENV}={bypass!r}: must be a positive integer "
                         "(how many later arrivals may be admitted before a request)")
    return ([frozenset(s) for s in pool.omission_sets],
            float(os.environ.get(MAX_WAIT_ENV, "10")),
            None if bypass is None else int(bypass))


def count_bypasses(waiting: list, admitted: set[str], bypassed: dict[str, int]) -> None:
    """After a step: each request still waiting gains one bypass per request admitted in
    this step that arrived after it (queue position = arrival order before reordering
    is not kept, so arrival_time decides); admitted requests leave the table."""
    later = sorted(r.arrival_time for r in waiting if r.request_id in admitted)
    if not later:
        return
    import bisect

    for r in waiting:
        if r.request_id in admitted:
            bypassed.pop(r.request_id, None)
            continue
        n = len(later) - bisect.bisect_right(later, r.arrival_time)
        if n:
            bypassed[r.request_id] = bypassed.get(r.request_id, 0) + n


def request_set(request) -> int | None:
    extra = getattr(request.sampling_params, "extra_args", None) or {}
    value = extra.get(SET_ARG)
    return None if value is None else int(value)


def admission_order(waiting: list, running: list, omitted: list[frozenset], max_wait_s: float,
                    now: float, max_bypass: int | None = None,
                    bypassed: dict[str, int] | None = None) -> list:
    """`waiting` sorted: aged requests (waited over `max_wait_s`, or bypassed by
    `max_bypass` later arrivals) first, in arrival order; then the rest by (core layers
    its set keeps, arrival position)."""
    bypassed = bypassed or {}
    core = None
    for req in running:
        s = request_set(req)
        if s is not None:
            core = omitted[s] if core is None else core & omitted[s]
    if core is None:
        first = next((request_set(r) for r in waiting if request_set(r) is not None), None)
        core = omitted[first] if first is not None else frozenset()

    def key(item):
        pos, req = item
        s = request_set(req)
        aged = now - req.arrival_time > max_wait_s or (
            max_bypass is not None and bypassed.get(req.request_id, 0) >= max_bypass)
        if aged:  # whatever its set: a request's wait is bounded by those older than it
            return (0, req.arrival_time, pos)
        return (1, 0 if s is None else len(core - omitted[s]), pos)

    return [req for _, req in sorted(enumerate(waiting), key=key)]


def _reorder(queue, running, omitted, max_wait_s, max_bypass, bypassed) -> None:
    ordered = admission_order(list(queue), running, omitted, max_wait_s, time.time(),
                              max_bypass, bypassed)
    queue.clear()
    queue.extend(ordered)
