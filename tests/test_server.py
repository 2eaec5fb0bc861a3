"""`vllm serve` on a pudding model dir: the OpenAI API routes each request by `vllm_xargs`,
and a request without a set is routed by the dir's hidden router, in the engine.

The dir is the hidden-router dir (conftest's `hidden_dir`), so one server covers pinned
sets, routing and bad input (a server start is ~30 s of this suite). Oracle: stock vLLM,
offline, on the checkpoint with the set's layers physically removed (tests/engines.py),
run before the server starts (2-core machines). Requests are greedy with token-id
prompts, and token ids come back through `return_token_ids`, so no detokenized text is
compared. (A dir without a router serves its `default_set`:
test_engine_exactness.py::test_default_set_without_arg.)
"""

import json

import pytest

from conftest import HIDDEN_SETS
from engines import CHUNK_BUDGET, greedy, token_prompts
from server_utils import assert_per_set_metrics, greedy_completion, offline_refs, tiny_server
from test_router_in_engine import CHAT_TEMPLATE, _tokens, llm, prompts  # noqa: F401

MODEL_NAME = "hidden"
MAX_TOKENS = 12
ATOL = 1e-3
LENGTHS = [7, 100]  # 100 > CHUNK_BUDGET: the prompt is prefilled in chunks
SETS = list(range(len(HIDDEN_SETS)))
PINNED_SETS = [1, 2]

assert max(LENGTHS) > CHUNK_BUDGET


@pytest.fixture(scope="module")
def prompt_ids():
    return [p["prompt_token_ids"] for p in token_prompts(LENGTHS, seed=3)]


@pytest.fixture(scope="module")
def static_refs(tiny_base, prompt_ids, tmp_path_factory):
    """(set id, prompt index) -> (tokens, logprobs) from stock vLLM, offline, each prompt
    alone, on the tiny base with each hidden set's layers physically removed."""
    from vllm_pudding.static import write_static_checkpoint

    root = tmp_path_factory.mktemp("hidden-static")
    static = {s: write_static_checkpoint(tiny_base, HIDDEN_SETS[s], root / f"set{s}")
              for s in SETS}
    return offline_refs(static, prompt_ids, MAX_TOKENS, root / "offline.log")


@pytest.fixture(scope="module")
def server(static_refs, hidden_dir, tmp_path_factory):
    """Started after the offline references, so no two engines share the 2 CPUs."""
    with tiny_server(hidden_dir, tmp_path_factory, MODEL_NAME,
                     ["--chat-template", CHAT_TEMPLATE]) as srv:
        yield srv


def complete(server, prompt_ids, xargs=None, **extra):
    body = {"model": MODEL_NAME, "prompt": prompt_ids, "max_tokens": MAX_TOKENS,
            "temperature": 0.0, "ignore_eos": True, "logprobs": 1,
            "return_token_ids": True, **extra}
    if xargs is not None:
        body["vllm_xargs"] = xargs
    return server.post("/v1/completions", body)


def tokens_and_logprobs_online(resp):
    """(generated token ids, logprob of each chosen token) of a 200 completion response."""
    assert resp.status_code == 200, f"HTTP {resp.status_code}: {resp.text[:2000]}"
    (choice,) = resp.json()["choices"]
    return list(choice["token_ids"]), list(choice["logprobs"]["token_logprobs"])


def assert_matches(got, want, what):
    tokens, lps = got
    ref_tokens, ref_lps = want
    assert tokens == ref_tokens, f"{what}: tokens {tokens} != static {ref_tokens}"
    assert len(lps) == len(ref_lps) == MAX_TOKENS
    worst = max(abs(a - b) for a, b in zip(lps, ref_lps))
    assert worst <= ATOL, f"{what}: logprob differs by {worst:.2e}"


def test_pinned_sets_match_static(server, static_refs, prompt_ids):
    for set_id in PINNED_SETS:
        for i, ids in enumerate(prompt_ids):
            got = tokens_and_logprobs_online(complete(server, ids, {"pudding_set": set_id}))
            assert_matches(got, static_refs[set_id, i], f"online set {set_id} prompt {i}")


def test_sets_give_different_outputs(static_refs, prompt_ids):
    """The oracle is only meaningful if the sets say different things."""
    for i in range(len(prompt_ids)):
        outs = {tuple(static_refs[s, i][0]) for s in SETS}
        assert len(outs) == len(SETS), f"prompt {i}: sets agree: {outs}"
        assert len(set(static_refs[0, i][0])) > 1, "greedy output is one repeated token"


def test_without_a_set_the_router_decides_and_the_set_runs_exactly(server, static_refs,
                                                                    prompt_ids):
    """No `pudding_set` (no xargs, or empty ones): routed by the hidden router, and the
    tokens are exactly the reported set's static ones."""
    for i, ids in enumerate(prompt_ids):
        for xargs in (None, {}):
            resp = complete(server, ids, xargs)
            got = tokens_and_logprobs_online(resp)
            (set_id,), routed = resp.json()["pudding_sets"], resp.json()["pudding_routed"]
            assert routed == [True], resp.text[:500]
            assert_matches(got, static_refs[set_id, i], f"routed (xargs={xargs}) prompt {i}")


BAD_SETS = [99, -1, "abc", 1.5]


@pytest.mark.parametrize("bad", BAD_SETS)
def test_bad_set_is_http_400(server, prompt_ids, bad):
    resp = complete(server, prompt_ids[0], {"pudding_set": bad})
    assert resp.status_code == 400, f"pudding_set={bad!r}: HTTP {resp.status_code} (want 400): " \
                                    f"{resp.text[:500]}"
    message = resp.json()["error"]["message"]
    assert "pudding_set" in message, f"error message does not name pudding_set: {message!r}"


def test_server_keeps_serving_after_bad_sets(server, static_refs, prompt_ids):
    """Bad set ids fail their own request only; the engine keeps serving, still exact."""
    for bad in BAD_SETS:
        resp = complete(server, prompt_ids[1], {"pudding_set": bad})
        assert resp.status_code != 200, f"pudding_set={bad!r} was accepted: {resp.text[:500]}"
        for set_id in (0, 1):
            got = tokens_and_logprobs_online(complete(server, prompt_ids[1], {"pudding_set": set_id}))
            assert_matches(got, static_refs[set_id, 1], f"set {set_id} after pudding_set={bad!r}")
    assert server.proc.poll() is None, "the server exited"


BAD_KEYS = [  # (vllm_xargs, the key the 400 must name)
    ({"pudding_sett": 1}, "pudding_sett"),
    ({"pudding_set": 1, "Pudding_Depth": 2}, "Pudding_Depth"),
    ({"pudding_route": True}, "pudding_route"),  # internal: only the plugin sets these
    ({"pudding_set": 1, "pudding_routed": True}, "pudding_routed"),
    ({"pudding_route_seconds": 0.5}, "pudding_route_seconds"),
]


def error_of(resp, status=400):
    assert resp.status_code == status, f"HTTP {resp.status_code} (want {status}): {resp.text[:500]}"
    return resp.json()["error"]


@pytest.mark.parametrize("xargs, key", BAD_KEYS)
def test_unknown_or_internal_key_is_http_400_naming_it(server, prompt_ids, xargs, key):
    error = error_of(complete(server, prompt_ids[0], xargs))
    assert key in error["message"] and "known pudding keys: pudding_set" in error["message"], error
    assert error["param"] == key, error


def test_json_true_is_not_set_1(server, prompt_ids):
    """vLLM's vllm_xargs schema coerces JSON true to 1; LLM.generate refuses True: so does
    the server (tests/test_engine_structure.py has the offline side)."""
    for stream in (False, True):
        error = error_of(complete(server, prompt_ids[0], {"pudding_set": True}, stream=stream))
        assert "pudding_set must be an integer set id, got True" in error["message"], error
    # "1" and 1.0 name set 1 as before
    for one in ("1", 1.0):
        got = tokens_and_logprobs_online(complete(server, prompt_ids[0], {"pudding_set": one}))
        assert got[0] == tokens_and_logprobs_online(
            complete(server, prompt_ids[0], {"pudding_set": 1}))[0]


def test_server_keeps_serving_after_bad_keys(server, static_refs, prompt_ids):
    for xargs, _ in BAD_KEYS:
        error_of(complete(server, prompt_ids[1], xargs))
    got = tokens_and_logprobs_online(complete(server, prompt_ids[1], {"pudding_set": 2}))
    assert_matches(got, static_refs[2, 1], "set 2 after bad keys")
    assert server.proc.poll() is None, "the server exited"


def test_bad_streaming_request_is_http_400_without_traceback(server, prompt_ids):
    """Checked before vLLM commits the stream: a plain 400, and the client's mistake leaves
    no traceback or ERROR line in the server log."""
    before = server.log_path.read_text(errors="replace")
    for xargs in ({"pudding_set": 99}, {"pudding_sett": 1}):
        error = error_of(complete(server, prompt_ids[0], xargs, stream=True))
        assert next(iter(xargs)) in error["message"], error
    new = server.log_path.read_text(errors="replace")[len(before):]
    assert "Traceback" not in new and " ERROR " not in new, new[-3000:]


# ------------------------------------------------ routed by the dir's hidden router

def test_server_reports_in_engine_sets(server, llm, prompts):
    texts, expected = prompts
    resp = greedy_completion(server, MODEL_NAME, texts, MAX_TOKENS)
    data = resp.json()
    assert data["pudding_sets"] == expected and all(data["pudding_routed"])
    assert "_pudding_set" not in resp.text
    offline = llm.generate(texts, [greedy(MAX_TOKENS, set_id=s) for s in expected],
                           use_tqdm=False)
    by_index = {c["index"]: c["token_ids"] for c in data["choices"]}
    assert [by_index[i] for i in range(len(texts))] == [_tokens(o) for o in offline]


def test_streamed_completion_chunks_carry_the_set(server, prompts):
    texts, expected = prompts
    resp = greedy_completion(server, MODEL_NAME, texts, 4, stream=True)
    seen = {}
    for line in resp.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[len("data: "):])["choices"]:
                seen.setdefault(choice["index"], set()).add(
                    (choice["pudding_set"], choice["pudding_routed"]))
    assert seen == {i: {(s, True)} for i, s in enumerate(expected)}


def test_chat_responses_carry_the_set_streamed_or_not(server, llm, prompts):
    """Chat prompts are routed on the rendered template's tokens; the server must report
    the set the offline engine decides for the same chat, streamed or not."""
    texts, _ = prompts
    for text in texts[:2]:
        messages = [{"role": "user", "content": text}]
        (offline,) = llm.chat([messages], greedy(4), chat_template=CHAT_TEMPLATE,
                              use_tqdm=False)
        want = (offline.pudding_set, True)
        body = {"model": MODEL_NAME, "messages": messages, "max_tokens": 4, "temperature": 0.0,
                "ignore_eos": True}
        full = server.post("/v1/chat/completions", body)
        assert full.status_code == 200, full.text[:2000]
        assert (full.json()["pudding_set"], full.json()["pudding_routed"]) == want
        streamed = server.post("/v1/chat/completions", {**body, "stream": True})
        chunks = [json.loads(line[len("data: "):]) for line in streamed.text.splitlines()
                  if line.startswith("data: {")]
        with_choices = [c for c in chunks if c.get("choices")]
        assert with_choices and all((c["pudding_set"], c["pudding_routed"]) == want
                                    for c in with_choices)


def test_metrics_count_each_set_routed_and_pinned(server, prompts):
    """/metrics (vLLM's Prometheus endpoint) counts what the responses report, per set,
    and one worker-timed routing observation per routed request."""
    texts, expected = prompts
    one = {"max_tokens": 3, "temperature": 0.0, "ignore_eos": True}
    bodies = ([{"prompt": t, **one} for t in texts]
              + [{"prompt": texts[0], **one, "vllm_xargs": {"pudding_set": 2}},
                 {"prompt": texts[1], **one, "max_tokens": 5, "vllm_xargs": {"pudding_set": 0}}])
    counts = assert_per_set_metrics(server, MODEL_NAME, bodies, MODEL_NAME, len(HIDDEN_SETS))
    routed = {}
    for s in expected:
        routed[(str(s), "true")] = routed.get((str(s), "true"), 0) + 1
    assert {k: v for k, v in counts.items() if k[1] == "true"} == routed


def test_chat_refuses_json_true_and_unknown_keys(server):
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for xargs, needle in (({"pudding_set": True}, "got True"), ({"pudding_sett": 1}, "pudding_sett")):
        for stream in (False, True):
            resp = server.post("/v1/chat/completions",
                                      {**body, "vllm_xargs": xargs, "stream": stream})
            assert resp.status_code == 400, resp.text[:500]
            assert needle in resp.json()["error"]["message"]
