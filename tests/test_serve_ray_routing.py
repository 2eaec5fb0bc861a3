"""`pudding serve-ray --options '{"routing": "serve"}'`: the set-blind baseline of
bench_dispatch (ray-default), exact like the set-affine app.

Not in the default run (CI): `pytest -m bench_baseline tests/test_serve_ray_routing.py`
(~80 s: a second Ray app). The baseline exists for bench_dispatch.py, whose Ray run checks
its dispatch counters too; the set-affine app's exactness stays in test_serve_ray.

Its own module: a second Ray app must not start while test_serve_ray's module app is
alive (two apps and the session engines do not fit in 24 GiB); pytest tears that module's
fixtures down before this one runs. Same oracle (`refs`: the offline engine pinned to each
set) and prompts as test_serve_ray.
"""

import pytest

from ray_utils import RayApp, skip_without_namespace
from server_utils import tiny_server_args
from test_router_in_engine import HIDDEN_SETS, prompts  # noqa: F401
from test_serve_ray import NAME, check_choice, complete, parallel, prompt_ids, refs  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.bench_baseline]


def test_serve_routing_baseline_is_set_blind_and_exact(hidden_dir, prompts, refs,
                                                       tmp_path_factory):
    """routing="serve" (bench_dispatch's ray-default): the replicas as one deployment behind
    Serve's own request router, pinned by rank; every response still equals the offline
    reference (the module's oracle), pinned and routed. One replica, to keep the second
    Ray app cheap (the benchmark's smoke run shows 2 replicas pinned to cores 0 and 1 and
    sharing the sets)."""
    skip_without_namespace()
    texts, expected = prompts
    log = tmp_path_factory.mktemp("ray-serve-routing") / "serve-ray.log"
    srv = RayApp(hidden_dir, log, tiny_server_args(NAME), replicas=1,
                 options={"routing": "serve", "router_max_workers": 1})
    try:
        jobs = [(i, s) for s in range(len(HIDDEN_SETS)) for i in range(2)]
        pins = parallel(lambda j: complete(srv, texts[j[0]], xargs={"pudding_set": j[1]}), jobs)
        routed = complete(srv, texts[0])
        stats = srv.get("/pudding/replicas")
    finally:
        srv.stop()
    for (i, s), resp in zip(jobs, pins):
        assert resp.status_code == 200, resp.text[:1000]
        assert resp.json()["pudding_sets"] == [s]
        check_choice(resp.json()["choices"][0], refs[s, i], f"prompt {i}, set {s}, Serve-routed")
    assert routed.json()["pudding_sets"] == [expected[0]], routed.text[:1000]
    check_choice(routed.json()["choices"][0], refs[expected[0], 0], "routed, Serve-routed")
    assert stats["routing"] == "serve" and stats["replicas"], stats
    answered = stats["answered"]  # replica -> set -> requests, from each answer's head
    assert list(answered) == ["0"], answered
    assert sum(answered["0"].values()) == len(jobs) + 1, answered
    (row,) = stats["replicas"]  # pinned by its rank: replica 0 on core 0
    assert row["replica"] == 0 and row["engine"]["cores"] == [0], row
