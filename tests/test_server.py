"""`vllm serve` on a pudding model dir: the OpenAI API routes each request by `vllm_xargs`.

Oracle: stock vLLM, offline, on the checkpoint with the set's layers physically
removed (tests/engines.py), run before the server starts (2-core machines).
One server per module; requests are greedy with token-id prompts, and token ids
come back through `return_token_ids`, so no detokenized text is compared.
"""

import json

import pytest

from engines import CHUNK_BUDGET, token_prompts
from server_utils import VllmServer, offline_refs, tiny_server_args

MODEL_NAME = "tiny-pudding"
MAX_TOKENS = 12
ATOL = 1e-3
LENGTHS = [7, 100]  # 100 > CHUNK_BUDGET: the prompt is prefilled in chunks
DEFAULT_SET = 0  # PuddingConfig.default_set, which conftest's pool leaves unset
PINNED_SETS = [1, 2]

assert max(LENGTHS) > CHUNK_BUDGET


@pytest.fixture(scope="module")
def prompt_ids():
    return [p["prompt_token_ids"] for p in token_prompts(LENGTHS, seed=3)]


@pytest.fixture(scope="module")
def static_refs(tiny_static, prompt_ids, tmp_path_factory):
    """(set id, prompt index) -> (tokens, logprobs) from stock vLLM, offline, each prompt alone."""
    sets = [DEFAULT_SET, *PINNED_SETS]
    return offline_refs({s: tiny_static[s] for s in sets}, prompt_ids, MAX_TOKENS,
                        tmp_path_factory.mktemp("refs") / "offline.log")


@pytest.fixture(scope="module")
def server(static_refs, tiny_pudding, tmp_path_factory):
    """Started after the offline references, so no two engines share the 2 CPUs."""
    log = tmp_path_factory.mktemp("server") / "vllm-serve.log"
    srv = VllmServer(tiny_pudding, log, tiny_server_args(MODEL_NAME))
    try:
        yield srv
    finally:
        srv.stop()


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
        outs = {tuple(static_refs[s, i][0]) for s in [DEFAULT_SET, *PINNED_SETS]}
        assert len(outs) == 1 + len(PINNED_SETS), f"prompt {i}: sets agree: {outs}"
        assert len(set(static_refs[DEFAULT_SET, i][0])) > 1, "greedy output is one repeated token"


def test_default_set_without_xargs(server, static_refs, prompt_ids):
    for i, ids in enumerate(prompt_ids):
        for xargs in (None, {}):
            got = tokens_and_logprobs_online(complete(server, ids, xargs))
            assert_matches(got, static_refs[DEFAULT_SET, i], f"default set (xargs={xargs}) prompt {i}")


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
        for set_id in (DEFAULT_SET, 1):
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
