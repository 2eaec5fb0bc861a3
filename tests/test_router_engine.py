"""Automatic routing through the engine: offline `LLM.generate` (the same dir served by
`vllm serve`, front-end routing and its metrics: test_dp_dispatch.py).

The tiny pudding dir gets a router trained on a planted signal (router_utils): topic
prompts whose best sets differ. Requests that name no set must run under the routed
set, exactly as if they had pinned it (pinned == static removal is proven in
test_engine_exactness); an explicit `pudding_set` wins; a prompt prefilled in chunks
is routed once; outputs say which set each request got.
"""

import pytest

from conftest import TINY_SETS
from engines import CHUNK_BUDGET, greedy
from router_utils import FILLER_HELD, planted_texts

MAX_TOKENS = 8


@pytest.fixture(scope="module")
def prompts():
    return planted_texts(2, seed=5, filler=FILLER_HELD)


def _stats():
    """(calls, prompts) of the front end's routers, summed: routers that other test
    modules loaded in this process stay registered, and only this module's engine runs
    now, so tests compare counts before and after their requests."""
    from vllm_pudding.router.runtime import router_stats

    stats = router_stats().values()
    return sum(s.calls for s in stats), sum(s.prompts for s in stats)


def _tokens(out):
    return list(out.outputs[0].token_ids)


def test_generate_routes_each_prompt_once_in_one_call(routed_llm, prompts):
    texts, truth = prompts
    before = _stats()
    routed = routed_llm.generate(texts, greedy(MAX_TOKENS), use_tqdm=False)
    calls, n = _stats()
    assert (calls - before[0], n - before[1]) == (1, len(texts)), \
        "one batched router call for the whole batch"
    assert [o.pudding_set for o in routed] == truth
    assert all(o.pudding_routed for o in routed)
    pinned = routed_llm.generate(texts, [greedy(MAX_TOKENS, set_id=s) for s in truth],
                                 use_tqdm=False)
    assert _stats() == (calls, n), "pinned requests must not call the router"
    assert [_tokens(o) for o in routed] == [_tokens(o) for o in pinned]
    assert not any(o.pudding_routed for o in pinned)
    assert len({tuple(_tokens(o)) for o in routed}) > 1, "routed sets must change the outputs"


def test_explicit_set_wins_over_router(routed_llm, prompts):
    texts, truth = prompts
    other = [(s + 1) % len(TINY_SETS) for s in truth]
    outs = routed_llm.generate(texts, [greedy(MAX_TOKENS, set_id=s) for s in other],
                               use_tqdm=False)
    assert [o.pudding_set for o in outs] == other


def test_mixed_batch_routes_only_unpinned(routed_llm, prompts):
    texts, truth = prompts
    params = [greedy(MAX_TOKENS, set_id=0) if i % 2 else greedy(MAX_TOKENS)
              for i in range(len(texts))]
    before = _stats()
    outs = routed_llm.generate(texts, params, use_tqdm=False)
    calls, n = _stats()
    assert (calls - before[0], n - before[1]) == (1, (len(texts) + 1) // 2)
    assert [o.pudding_set for o in outs] == [0 if i % 2 else t for i, t in enumerate(truth)]


def test_chunked_prompt_is_routed_once(routed_llm, prompts):
    texts, truth = prompts
    long_text = " ".join([texts[-1]] * 30)  # same topic, > CHUNK_BUDGET tokens
    tok = routed_llm.get_tokenizer()
    assert len(tok(long_text)["input_ids"]) > 2 * CHUNK_BUDGET
    before = _stats()
    (out,) = routed_llm.generate([long_text], greedy(MAX_TOKENS), use_tqdm=False)
    assert _stats()[1] - before[1] == 1
    assert out.pudding_set == truth[-1]
    (pinned,) = routed_llm.generate([long_text], greedy(MAX_TOKENS, set_id=truth[-1]),
                                    use_tqdm=False)
    assert _tokens(out) == _tokens(pinned)


def test_token_prompts_are_routed_by_their_text(routed_llm, prompts):
    from vllm.inputs import TokensPrompt

    texts, truth = prompts
    tok = routed_llm.get_tokenizer()
    ids = [TokensPrompt(prompt_token_ids=tok(t, add_special_tokens=False)["input_ids"])
           for t in texts]
    outs = routed_llm.generate(ids, greedy(MAX_TOKENS), use_tqdm=False)
    assert [o.pudding_set for o in outs] == truth


def test_missing_router_fails_at_start_naming_the_file(routed_dir, tmp_path):
    import shutil

    from vllm import LLM

    from engines import engine_kwargs

    broken = tmp_path / "broken"
    shutil.copytree(routed_dir, broken, symlinks=True)
    (broken / "router-text" / "router.json").unlink()
    with pytest.raises(Exception, match="router.json: router spec missing"):
        LLM(model=str(broken), **engine_kwargs(skip_tokenizer_init=False))


def test_engine_check_offline_router_keeps_to_routable_sets(routed_dir, tmp_path, prompts,
                                                            monkeypatch):
    """`router.engine_check` compares the engine's decisions with the offline router's:
    both must apply the pool's `routable_sets` (it once compared a restricted engine with
    an unrestricted router and reported 25% agreement)."""
    import json
    import shutil

    from vllm_pudding.router.engine_check import offline_sets

    monkeypatch.setenv("PUDDING_CACHE", str(tmp_path / "cache"))  # its feature cache
    texts, planted = prompts
    free = offline_sets(routed_dir, {"t": texts})["t"]
    assert free == planted  # every set is someone's pick
    restricted_dir = tmp_path / "pd"
    shutil.copytree(routed_dir, restricted_dir, symlinks=True)
    config = json.loads((restricted_dir / "config.json").read_text())
    config["pudding"]["routable_sets"] = [0, 2]
    (restricted_dir / "config.json").write_text(json.dumps(config))
    restricted = offline_sets(restricted_dir, {"t": texts})["t"]
    assert set(restricted) <= {0, 2}
    assert [r for r, f in zip(restricted, free) if f != 1] == [f for f in free if f != 1]
