"""`pudding serve-ray`: 2 engine replicas of a tiny pudding dir with a hidden router, routing
workers and the set-affine ingress, on Ray Serve in a loopback-only namespace.

Oracle: the offline engine on the same dir pinned to the response's set, each prompt alone
(pinned == static removal: test_engine_exactness), run before the app starts. Routed sets
must be the head's choice on HF prefix states (test_router_in_engine's `prompts`). One app
for the module; the fault tests run last (they kill a routing worker, then a replica,
under load). The routing="serve" app: test_serve_ray_routing.py.
"""

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from ray_utils import RayApp, skip_without_namespace
from server_utils import tiny_server_args
from test_router_in_engine import CHAT_TEMPLATE, HIDDEN_SETS, prompts  # noqa: F401

pytestmark = pytest.mark.slow

NAME = "tiny-ray"
LONG = 96  # the fault test's length; other requests compare a prefix of the same reference
SHORT = 8
ATOL = 1e-3
# Set 0 at half the traffic: the policy then groups {0} | {1, 2} (a replica per group) rather
# than both replicas serving all three sets; no regrouping during the module.
OPTIONS = {"dispatch": {"initial_freqs": [2, 1, 1], "regroup_every": 100000},
           "router_batch_wait_s": 1.0, "route_timeout_s": 3.0, "route_retries": 2,
           "router_max_workers": 1, "unavailable_wait_s": 120.0}


@pytest.fixture(scope="module")
def prompt_ids(hidden_dir, prompts):
    """Token ids of the held-out texts as vLLM tokenizes a text prompt."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hidden_dir))
    return [tok(t)["input_ids"] for t in prompts[0]]


@pytest.fixture(scope="module")
def refs(hidden_llm, prompt_ids):
    """(set id, prompt index) -> (tokens, logprobs) of LONG greedy tokens, each prompt
    alone, from the offline engine pinned to the set (pinned == static removal:
    test_engine_exactness), taken before the app starts."""
    from vllm.inputs import TokensPrompt

    from engines import greedy, tokens_and_logprobs

    refs = {}
    for s in range(len(HIDDEN_SETS)):
        for i, ids in enumerate(prompt_ids):
            (out,) = hidden_llm.generate([TokensPrompt(prompt_token_ids=ids)],
                                         greedy(LONG, set_id=s), use_tqdm=False)
            refs[s, i] = tokens_and_logprobs(out)
    return refs


@pytest.fixture(scope="module")
def app(hidden_dir, refs, tmp_path_factory):
    skip_without_namespace()
    log = tmp_path_factory.mktemp("ray") / "serve-ray.log"
    srv = RayApp(hidden_dir, log, tiny_server_args(NAME) + ["--chat-template", CHAT_TEMPLATE],
                 replicas=2, options=OPTIONS)
    try:
        yield srv
    finally:
        srv.stop()


def complete(app, prompt, max_tokens=SHORT, xargs=None, **extra):
    body = {"model": NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "logprobs": 1, "return_token_ids": True, **extra}
    if xargs is not None:
        body["vllm_xargs"] = xargs
    return requests.post(f"{app.base_url}/v1/completions", json=body, timeout=600)


def check_choice(choice, ref, what):
    tokens, lps = choice["token_ids"], choice["logprobs"]["token_logprobs"]
    want_tokens, want_lps = ref[0][:len(tokens)], ref[1][:len(tokens)]
    assert tokens == want_tokens, f"{what}: tokens {tokens} != static {want_tokens}"
    worst = max(abs(a - b) for a, b in zip(lps, want_lps))
    assert worst <= ATOL, f"{what}: logprob differs by {worst:.2e}"


def parallel(fn, items):
    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(fn, items))


def test_routed_and_pinned_responses_equal_offline(app, prompts, prompt_ids, refs):
    texts, expected = prompts
    pinned = [(i, i % len(HIDDEN_SETS)) for i in range(len(texts))]
    routed = parallel(lambda t: complete(app, t), texts)
    pins = parallel(lambda p: complete(app, texts[p[0]], xargs={"pudding_set": p[1]}), pinned)
    for i, resp in enumerate(routed):
        assert resp.status_code == 200, resp.text[:1000]
        data = resp.json()
        assert data["pudding_sets"] == [expected[i]] and data["pudding_routed"] == [True], data
        (choice,) = data["choices"]
        assert choice["prompt_token_ids"] == prompt_ids[i]
        check_choice(choice, refs[expected[i], i], f"routed prompt {i}")
    for (i, s), resp in zip(pinned, pins):
        assert resp.status_code == 200, resp.text[:1000]
        data = resp.json()
        assert data["pudding_sets"] == [s] and data["pudding_routed"] == [False], data
        check_choice(data["choices"][0], refs[s, i], f"prompt {i} pinned to set {s}")


def test_several_routed_prompts_are_split_and_merged_in_order(app, prompts, refs):
    texts, expected = prompts
    resp = complete(app, texts)
    assert resp.status_code == 200, resp.text[:1000]
    data = resp.json()
    assert data["pudding_sets"] == expected and data["pudding_routed"] == [True] * len(texts)
    assert [c["index"] for c in data["choices"]] == list(range(len(texts)))
    for i, choice in enumerate(data["choices"]):
        check_choice(choice, refs[expected[i], i], f"prompt {i} of a multi-prompt request")
    assert data["usage"]["completion_tokens"] == SHORT * len(texts)


def test_chat_and_token_prompts_route_on_the_engines_tokens(app, planted, hidden_dir,
                                                            prompts):
    """The hidden router reads what the engine would: the chat as rendered (this template
    adds no special tokens), a token-id prompt as sent."""
    from transformers import AutoTokenizer

    _, head, enc = planted
    tok = AutoTokenizer.from_pretrained(str(hidden_dir))
    texts, _ = prompts
    bare = [tok(t, add_special_tokens=False)["input_ids"] for t in texts[:3]]
    want = head.route(enc.encode_ids(bare))
    for text, ids, s in zip(texts, bare, want):
        chat = {"model": NAME, "messages": [{"role": "user", "content": text}],
                "max_tokens": 2, "temperature": 0.0}
        data = requests.post(f"{app.base_url}/v1/chat/completions", json=chat, timeout=300).json()
        assert (data["pudding_set"], data["pudding_routed"]) == (s, True), data
        data = complete(app, ids, max_tokens=2).json()
        assert data["pudding_sets"] == [s] and data["choices"][0]["prompt_token_ids"] == ids


def test_chat_and_streams_carry_the_set(app, prompts):
    texts, expected = prompts
    chat = {"model": NAME, "messages": [{"role": "user", "content": texts[0]}],
            "max_tokens": 4, "temperature": 0.0, "ignore_eos": True}
    resp = requests.post(f"{app.base_url}/v1/chat/completions", json=chat, timeout=300)
    assert resp.status_code == 200, resp.text[:1000]
    whole = resp.json()
    assert whole["pudding_routed"] is True
    chat_set = whole["pudding_set"]
    resp = requests.post(f"{app.base_url}/v1/chat/completions", json={**chat, "stream": True},
                         timeout=300)
    events = [json.loads(line[6:]) for line in resp.text.splitlines()
              if line.startswith("data: {")]
    assert events and {(e["pudding_set"], e["pudding_routed"]) for e in events} == \
        {(chat_set, True)}, resp.text[:2000]
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    resp = complete(app, texts[1], max_tokens=4, stream=True)
    events = [json.loads(line[6:]) for line in resp.text.splitlines()
              if line.startswith("data: {")]
    assert {(c["pudding_set"], c["pudding_routed"]) for e in events for c in e["choices"]} == \
        {(expected[1], True)}, resp.text[:2000]


def test_each_replica_served_only_its_groups_sets(app):
    stats = app.get("/pudding/replicas")["replicas"]
    groups = [set(r["sets"]) for r in stats]
    assert sorted(map(sorted, groups)) == [[0], [1, 2]], groups
    for r in stats:
        assert r["spills"] == 0, r
        served = r["engine"]["sets_served"]
        assert served and {int(s) for s in served} <= set(r["sets"]), r
        assert sum(served.values()) == sum(r["dispatched"].values()), r


BAD = [  # (body changes, status, what the error message must name); as test_server.py
    ({"vllm_xargs": {"pudding_sett": 1}}, 400, "unknown key 'pudding_sett'"),
    ({"vllm_xargs": {"pudding_route": True}}, 400, "pudding_route is set by vllm-pudding"),
    ({"vllm_xargs": {"pudding_set": 99}}, 400, "pudding_set=99 is not a set id"),
    ({"vllm_xargs": {"pudding_set": True}}, 400, "pudding_set must be an integer set id"),
    ({"max_tokens": -1}, 400, "max_tokens"),
    ({"model": "no-such-model"}, 404, "no-such-model"),
]


@pytest.mark.parametrize("stream", [False, True])
def test_bad_input_gets_vllm_serves_4xx(app, prompts, stream):
    for change, status, words in BAD:
        body = {"model": NAME, "prompt": prompts[0][0], "max_tokens": 2, "stream": stream,
                **change}
        resp = requests.post(f"{app.base_url}/v1/completions", json=body, timeout=300)
        assert resp.status_code == status, (change, resp.status_code, resp.text[:500])
        assert words in resp.json()["error"]["message"], (change, resp.text[:500])
    resp = requests.post(f"{app.base_url}/v1/completions", data=b"{not json",
                         headers={"content-type": "application/json"}, timeout=300)
    assert resp.status_code == 400, resp.text[:500]


def test_example_client_runs_against_the_app(app):
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "ray_client.py"
    out = subprocess.run([sys.executable, str(script), "--url", app.base_url, "--model", NAME,
                          "--max-tokens", "4", "--set", "1"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for pattern in (r"^completion, pinned: sets \[1\] routed \[False\]: ",
                    r"^completion, routed: sets \[\d\] routed \[True\]: ",
                    r"^chat, routed: set \d routed True: ",
                    r"^completion, streamed, routed: \(set, routed\) per chunk \[\(\d, True\)\]",
                    r"^mistyped key: HTTP 400: .*unknown key 'pudding_sett'",
                    r"^replica 0: group \[0\], served \{'0': \d+\}, spills 0$"):
        assert re.search(pattern, out.stdout, re.M), f"no {pattern!r} in:\n{out.stdout}"


def test_example_serve_config_builds_the_app(hidden_dir):
    """examples/ray_serve_config.yaml: its import_path and args make the application."""
    import importlib
    from pathlib import Path

    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "examples" /
                             "ray_serve_config.yaml").read_text())
    (application,) = config["applications"]
    module, _, attr = application["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), attr)
    bound = builder({**application["args"], "model": str(hidden_dir)})
    assert type(bound).__name__ == "Application", bound


def test_routing_worker_killed_its_pending_prompts_still_complete(app, prompts):
    texts, expected = prompts
    before = app.get("/pudding/replicas")
    worker_pid = before["router"]["pid"]
    with ThreadPoolExecutor(len(texts)) as pool:
        futures = [pool.submit(complete, app, t, 2) for t in texts]
        time.sleep(0.5)  # inside the worker's 1 s batch window
        os.kill(worker_pid, signal.SIGKILL)
        results = [f.result() for f in futures]
    for i, resp in enumerate(results):
        assert resp.status_code == 200, resp.text[:1000]
        assert resp.json()["pudding_sets"] == [expected[i]]
    after = app.get("/pudding/replicas")["counters"]
    assert after.get("route_retries", 0) > before["counters"].get("route_retries", 0), after


def test_replica_killed_under_load_every_request_completes_and_it_restarts(app, prompts,
                                                                           refs):
    texts, _ = prompts
    jobs = [(i, s) for s in range(len(HIDDEN_SETS)) for i in range(len(texts))][:12]
    before = app.get("/pudding/replicas")
    victim = before["replicas"][1]  # serves sets 1 and 2: 8 of the 12 requests
    assert victim["sets"] == [1, 2], victim
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(complete, app, texts[i], LONG, {"pudding_set": s})
                   for i, s in jobs]
        # Dispatched within ~0.1 s; the 8 generations then take >1 s even on a quiet machine.
        # (Polling /pudding/loads instead was too slow: the ingress shares the 2 busy cores.)
        time.sleep(0.3)
        os.kill(victim["engine"]["pid"], signal.SIGKILL)
        results = [f.result() for f in futures]
    for (i, s), resp in zip(jobs, results):
        assert resp.status_code == 200, resp.text[:1000]
        check_choice(resp.json()["choices"][0], refs[s, i], f"prompt {i}, set {s}, resent")
    counters = app.get("/pudding/replicas")["counters"]
    assert counters.get("resent", 0) > before["counters"].get("resent", 0), counters
    back = app.wait_for(lambda d: not d["replicas"][victim["replica"]]["down"], 600,
                        "the killed replica restarted by Serve")
    new = back["replicas"][victim["replica"]]["engine"]
    assert new["pid"] != victim["engine"]["pid"], new
    check_choice(complete(app, texts[0], xargs={"pudding_set": 0}).json()["choices"][0],
                 refs[0, 0], "after the restart")


def test_prefix_encoder_reads_token_ids_as_it_reads_their_text(planted, hidden_dir, prompts):
    """What the routing workers use for token-id and chat prompts (no Ray needed)."""
    import torch
    from transformers import AutoTokenizer

    _, _, enc = planted
    tok = AutoTokenizer.from_pretrained(str(hidden_dir))
    texts = prompts[0]
    ids = [tok(t)["input_ids"] for t in texts]
    torch.testing.assert_close(enc.encode_ids(ids), enc(texts))
    with pytest.raises(ValueError, match="non-empty"):
        enc.encode_ids([[]])


def test_cli_refuses_ray_outside_a_loopback_namespace(monkeypatch, hidden_dir, capsys):
    """No namespace can be made: a clear refusal naming the way out, before Ray starts;
    bad `vllm serve` flags are refused before Ray starts too."""
    from vllm_pudding import cli
    from vllm_pudding.serve_ray import launch, netns
    from vllm_pudding.serve_ray.app import RayAppConfig

    config = RayAppConfig(model=str(hidden_dir))
    monkeypatch.setattr(netns, "loopback_only", lambda: False)
    monkeypatch.setattr(netns, "why_no_namespace", lambda: "`unshare -n` failed (it needs root)")
    with pytest.raises(SystemExit, match=r"loopback-only network namespace.*needs root.*"
                                         r"--host-network"):
        launch.serve_ray(config, port=0)
    with pytest.raises(SystemExit, match="refusing to start Ray"):
        launch.run_inside(config, None, 0)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve-ray", str(hidden_dir), "--", "--no-such-vllm-flag"])
    assert exit_info.value.code == 2
    assert "bad `vllm serve` flags after `--`" in capsys.readouterr().err


def test_loopback_command_runs_in_a_namespace_with_only_lo():
    import subprocess
    import sys

    from vllm_pudding.serve_ray import netns

    skip_without_namespace()
    out = subprocess.run(netns.loopback_command(
        [sys.executable, "-c", "from vllm_pudding.serve_ray.netns import interfaces, "
         "loopback_only; print(interfaces(), loopback_only())"]),
        capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "['lo'] True", out
