"""Data-parallel `vllm serve DIR --data-parallel-size 2`: set-affine dispatch.

One server, two engines (one core each), a tiny pudding dir with a text router trained on
a planted signal (router_utils), so both pinned and routed requests know their set in the
front end. The dispatch options put set 0 alone on one engine and sets 1 and 2 on the
other (`initial_freqs` [2, 1, 1]: with a uniform prior this pool's best plan at 2
replicas is one group of all sets). Oracle: the offline engine pinned to each set (pinned
== static removal is proven in test_engine_exactness), run before the server starts.
This is also the suite's `vllm serve` with a text router (front-end routing, several
prompts in one request, the per-set metrics and the router's timing histogram).
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor
from unittest import mock

import pytest

from conftest import TINY_SETS
from engines import greedy
from router_utils import FILLER_HELD, planted_texts
from server_utils import (VllmServer, assert_per_set_metrics, greedy_completion,
                          pudding_metrics, tiny_server_args)

MAX_TOKENS = 8
NAME = "dp"
OPTIONS = {"initial_freqs": [2, 1, 1]}
GROUPS = {"0": {"0"}, "1": {"1", "2"}}  # engine -> sets the options above give it

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prompts():
    return planted_texts(2, seed=5, filler=FILLER_HELD)


@pytest.fixture(scope="module")
def offline(routed_llm, prompts):
    """(text index, set id) -> greedy token ids from the offline engine pinned to the set
    (the session's engine on the same dir, idle while the server runs)."""
    texts, _ = prompts
    pairs = [(i, s) for i in range(len(texts)) for s in range(len(TINY_SETS))]
    outs = routed_llm.generate([texts[i] for i, _ in pairs],
                               [greedy(MAX_TOKENS, set_id=s) for _, s in pairs], use_tqdm=False)
    return {pair: list(o.outputs[0].token_ids) for pair, o in zip(pairs, outs)}


@pytest.fixture(scope="module")
def server(routed_dir, offline, tmp_path_factory):
    """Started after the offline references are taken; one core per engine."""
    args = tiny_server_args(NAME) + [
        "--data-parallel-size", "2", "--additional-config",
        json.dumps({"pudding_dispatch": OPTIONS})]
    log = tmp_path_factory.mktemp("server") / "vllm-serve.log"
    # Two engines and two API servers: slower to start than one engine on a busy machine.
    with mock.patch.dict(os.environ, {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}):
        srv = VllmServer(routed_dir, log, args, startup_timeout=600)
    try:
        yield srv
    finally:
        srv.stop()


def _series(metrics, name, **match):
    """{labels dict: value} of one series name whose labels include `match`."""
    return [(dict(labels), v) for (n, labels), v in metrics.items()
            if n == name and all(dict(labels).get(k) == x for k, x in match.items())]


def test_responses_equal_offline_and_engines_serve_their_groups(server, offline, prompts):
    texts, truth = prompts
    before = pudding_metrics(server)
    pinned = [(i, s) for i in range(len(texts)) for s in range(len(TINY_SETS))]

    def send(job):
        i, s = job
        extra = {} if s is None else {"vllm_xargs": {"pudding_set": s}}
        return job, greedy_completion(server, NAME, texts[i], MAX_TOKENS, **extra).json()

    jobs = pinned + [(i, None) for i in range(len(texts))]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, jobs))
    for (i, s), data in results:
        (set_id,), (routed,) = data["pudding_sets"], data["pudding_routed"]
        assert set_id == (truth[i] if s is None else s) and routed == (s is None)
        assert data["choices"][0]["token_ids"] == offline[(i, set_id)], (i, s)

    metrics = pudding_metrics(server)
    groups = {}
    for labels, v in _series(metrics, "vllm:pudding_dispatch_group", model_name=NAME):
        if v == 1.0:
            groups.setdefault(labels["engine"], set()).add(labels["set"])
    assert groups == GROUPS
    sent = _series(metrics, "vllm:pudding_dispatch_requests_total", model_name=NAME)
    assert sum(v for _, v in sent) == len(jobs)
    assert sum(v for labels, v in sent if labels["spilled"] == "true") == 0
    for labels, v in sent:
        assert v == 0 or labels["set"] in GROUPS[labels["engine"]], labels
    # What the engines report having finished (the per-set series, by engine).
    key = ("vllm:pudding_requests_total",)
    for labels, v in _series(metrics, *key, model_name=NAME):
        was = before.get((key[0], tuple(sorted(labels.items()))), 0.0)
        assert v == was or labels["set"] in GROUPS[labels["engine"]], labels
    assert all(sum(v for labels, v in _series(metrics, *key, engine=e)) > 0 for e in GROUPS)


def test_several_routed_prompts_in_one_request(server, offline, prompts):
    """One request, several prompts routed to different sets: split per prompt, each
    dispatched by its set, merged back in order."""
    texts, truth = prompts
    data = greedy_completion(server, NAME, texts, MAX_TOKENS).json()
    assert data["pudding_sets"] == truth and all(data["pudding_routed"])
    by_index = {c["index"]: c["token_ids"] for c in data["choices"]}
    assert [by_index[i] for i in range(len(texts))] == [offline[(i, s)] for i, s in
                                                        enumerate(truth)]


def test_metrics_count_each_set_and_time_the_text_router(server, prompts):
    texts, _ = prompts
    one = {"max_tokens": 2, "temperature": 0.0, "ignore_eos": True}
    bodies = [{"prompt": t, **one} for t in texts[:3]] + [
        {"prompt": texts[0], **one, "vllm_xargs": {"pudding_set": 1}}]
    counts = assert_per_set_metrics(server, NAME, bodies, "text", len(TINY_SETS))
    assert sum(n for (_, routed), n in counts.items() if routed == "true") == 3


def test_bad_set_is_http_400_and_serving_continues(server, offline, prompts):
    texts, _ = prompts
    resp = server.post("/v1/completions", {"model": NAME, "prompt": texts[0], "max_tokens": 2,
                                            "vllm_xargs": {"pudding_set": 99}})
    assert resp.status_code == 400 and "pudding_set" in resp.json()["error"]["message"]
    data = greedy_completion(server, NAME, texts[0], MAX_TOKENS,
                             vllm_xargs={"pudding_set": 2}).json()
    assert data["choices"][0]["token_ids"] == offline[(0, 2)]


def test_bad_dispatch_options_are_refused():
    from vllm_pudding.patches.dp_dispatch import configured_options

    assert configured_options({"pudding_dispatch": "vllm"}) is None
    assert configured_options(None).max_spill_fraction == 0.1
    with pytest.raises(ValueError, match="pudding_dispatch"):
        configured_options({"pudding_dispatch": 3})
    with pytest.raises(ValueError, match="queueing_load"):
        configured_options({"pudding_dispatch": {"queueing_load": 0}})
