"""vLLM's own benchmark CLI on pudding models, and `pudding_spread_sets` (spread.py).

- Offline: requests that name no set get sets in turn and run exactly as if pinned
  (on the session's shared tiny engine, the option switched on in its front end).
- `vllm bench throughput` on the tiny pudding dir with the option: every request's set
  is recorded (tests/bench_probe.py) and they cycle over the pool.
- `vllm serve pudding/smollm2-135m` on 127.0.0.1: the name is the served name, and
  `vllm bench serve --model pudding/smollm2-135m` (which loads the tokenizer by that
  name) completes every request; with the option, consecutive requests get
  consecutive sets.
"""

import json
import sys
from contextlib import contextmanager

import pytest

from engines import greedy, token_prompts, tokens_and_logprobs
from server_utils import TESTS_DIR, VllmServer, run_cli

SPREAD = "pudding_spread_sets"
NAME = "pudding/smollm2-135m"


@contextmanager
def spread_on(llm, mode: str = "round_robin"):
    config = llm.llm_engine.vllm_config.additional_config
    config[SPREAD] = mode
    try:
        yield
    finally:
        del config[SPREAD]


def test_spread_gives_sets_in_turn_exactly_as_pinned(pudding_llm):
    prompts = token_prompts([9, 30, 17, 5, 12, 40, 21], seed=11)
    params = [greedy(6) for _ in prompts]
    params[3] = greedy(6, set_id=2)  # a pinned request keeps its set and takes no turn
    with spread_on(pudding_llm):
        spread = pudding_llm.generate(prompts, params, use_tqdm=False)
    assert [o.pudding_set for o in spread] == [0, 1, 2, 2, 0, 1, 2]
    assert not any(o.pudding_routed for o in spread)
    pinned = pudding_llm.generate(prompts, [greedy(6, set_id=o.pudding_set) for o in spread],
                                  use_tqdm=False)
    assert [tokens_and_logprobs(o) for o in spread] == [tokens_and_logprobs(o) for o in pinned]
    plain = pudding_llm.generate(prompts[:2], greedy(6), use_tqdm=False)
    assert [o.pudding_set for o in plain] == [0, 0], "off again: the default set"


def test_bad_spread_mode_fails_at_start(tiny_pudding):
    from vllm.engine.arg_utils import EngineArgs

    with pytest.raises(ValueError, match=f"{SPREAD}.*round_robin"):
        EngineArgs(model=str(tiny_pudding), additional_config={SPREAD: "sideways"},
                   max_model_len=256).create_engine_config()


def test_bench_throughput_spreads_requests_over_the_pool(tiny_pudding, tmp_path):
    record, result = tmp_path / "sets.json", tmp_path / "throughput.json"
    run_cli([sys.executable, str(TESTS_DIR / "bench_probe.py"), str(record), "bench",
             "throughput", "--model", str(tiny_pudding), "--dataset-name", "random",
             "--random-input-len", "8", "--random-output-len", "2", "--num-prompts", "6",
             "--dtype", "float32", "--max-model-len", "64", "--enforce-eager",
             "--kv-cache-memory-bytes", str(16 << 20),
             "--additional-config", json.dumps({SPREAD: "round_robin"}),
             "--output-json", str(result)],
            tmp_path / "bench.log", {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert json.loads(record.read_text()) == [0, 1, 2, 0, 1, 2]
    assert json.loads(result.read_text())["num_requests"] == 6


@pytest.fixture(scope="module")
def named_server(tmp_path_factory):
    """`vllm serve pudding/smollm2-135m` (eager: no layer compile at start)."""
    log = tmp_path_factory.mktemp("named") / "vllm-serve.log"
    srv = VllmServer(NAME, log, ["--dtype", "bfloat16", "--max-model-len", "512",
                                 "--enforce-eager", "--additional-config",
                                 json.dumps({SPREAD: "round_robin"})], startup_timeout=300)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.slow
def test_served_under_its_name(named_server):
    import requests

    (model,) = requests.get(f"{named_server.base_url}/v1/models", timeout=10).json()["data"]
    assert model["id"] == model["root"] == NAME
    sets = []
    for _ in range(3):
        resp = named_server.post("/v1/completions", {"model": NAME, "prompt": "The sky is",
                                                      "max_tokens": 2})
        assert resp.status_code == 200, resp.text[:500]
        assert resp.json()["model"] == NAME and resp.json()["pudding_routed"] == [False]
        sets += resp.json()["pudding_sets"]
    assert [(b - a) % 10 for a, b in zip(sets, sets[1:])] == [1, 1], sets
    pinned = named_server.post("/v1/completions", {"model": NAME, "prompt": "The sky is",
                                                   "max_tokens": 2, "vllm_xargs": {"pudding_set": 7}})
    assert pinned.json()["pudding_sets"] == [7]


@pytest.mark.slow
def test_bench_serve_by_name(named_server, tmp_path):
    run_cli([sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve",
             "--model", NAME, "--base-url", named_server.base_url, "--dataset-name", "random",
             "--random-input-len", "16", "--random-output-len", "4", "--num-prompts", "6",
             "--save-result", "--result-dir", str(tmp_path), "--result-filename", "serve.json"],
            tmp_path / "bench-serve.log")
    result = json.loads((tmp_path / "serve.json").read_text())
    assert (result["completed"], result["failed"]) == (6, 0)
    assert result["model_id"] == NAME
