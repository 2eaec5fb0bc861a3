"""The hidden router inside the engine: decided from the engine's own prefix states.

A router trained on the tiny base's layer-0 states (planted topic labels, router_utils)
is installed as a "hidden" router. Requests that name no set must be decided in the
worker on their first chunk, exactly as the head decides on HF states of the same
prompt; run exactly like the same set pinned (token-for-token); report the set to the
caller offline and through `vllm serve`; and never call a front-end router.
"""

import pytest

from conftest import HIDDEN_SETS
from engines import CHUNK_BUDGET, engine, greedy
from router_utils import FILLER_HELD, planted_texts

MAX_TOKENS = 8
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # the tiny model has none


@pytest.fixture(scope="module")
def prompts(planted):
    """Held-out prompts, and the set the trained head picks from HF states of each.

    The oracle is the head on HF states, not the planted topic: a random 6-layer model's
    layer-0 states carry the topic only partly (the head gets ~80% of unseen prompts).
    """
    _, head, enc = planted
    texts, truth = planted_texts(2, seed=5, filler=FILLER_HELD)
    expected = head.route(enc(texts))
    assert len(set(expected)) == len(HIDDEN_SETS), "the prompts must be routed to every set"
    assert sum(e == t for e, t in zip(expected, truth)) > len(truth) / 2
    return texts, expected


@pytest.fixture(scope="module")
def llm(hidden_llm):
    return hidden_llm


def _routed_rows(llm) -> int:
    from vllm_pudding.depth import step_stats

    return llm.apply_model(step_stats)[0].get("routed_rows", 0)


def _tokens(out):
    return list(out.outputs[0].token_ids)


def test_engine_decides_like_the_head_and_runs_like_pinned(llm, prompts):
    from vllm_pudding.router.runtime import router_stats

    texts, expected = prompts
    before, front_end = _routed_rows(llm), repr(router_stats())
    routed = llm.generate(texts, greedy(MAX_TOKENS), use_tqdm=False)
    assert [o.pudding_set for o in routed] == expected
    assert all(o.pudding_routed for o in routed)
    assert _routed_rows(llm) - before == len(texts), "each prompt decided once, in the worker"
    assert repr(router_stats()) == front_end, "a hidden router must not run in the front end"
    pinned = llm.generate(texts, [greedy(MAX_TOKENS, set_id=s) for s in expected],
                          use_tqdm=False)
    assert [_tokens(o) for o in routed] == [_tokens(o) for o in pinned]
    assert [o.outputs[0].logprobs for o in routed] == [o.outputs[0].logprobs for o in pinned]
    assert not any(o.pudding_routed for o in pinned)
    assert len({tuple(_tokens(o)) for o in routed}) > 1, "routed sets must change the outputs"
    assert all(o.kv_transfer_params is None for o in routed), "the private key must not leak"


def test_in_engine_router_never_picks_a_set_outside_routable_sets(tiny_base, planted, tmp_path):
    import numpy as np
    import torch

    from vllm_pudding.artifact import build_pudding_dir, load_pudding_dir
    from vllm_pudding.config import PuddingConfig
    from vllm_pudding.router.in_engine import load_engine_router, pool_chunks
    from vllm_pudding.router.install import install_router

    d = build_pudding_dir(tiny_base, PuddingConfig(omission_sets=HIDDEN_SETS,
                                                   routable_sets=[0, 2]), tmp_path / "pd")
    install_router(d, planted[0])
    router = load_engine_router(d, load_pudding_dir(d), 128, torch.device("cpu"))
    torch.manual_seed(0)
    states, qsl, rows = torch.randn(600, 128) * 3, np.arange(0, 601, 10), np.arange(60)
    with torch.no_grad():
        scores = planted[1](pool_chunks(states, qsl, rows, router.spec.max_tokens,
                                        router.spec.pooling))
    assert 1 in scores.argmax(-1).tolist(), "unrestricted, some rows would pick set 1"
    assert router.decide(states, qsl, rows).tolist() == \
        [0 if s[0] >= s[2] else 2 for s in scores.tolist()]


def test_routing_copies_indices_twice_and_never_in_the_layer_loop(llm, prompts):
    """A routed step adds two host-to-device copies (the features' indices, the re-plan
    once the sets are known) to the plan's one; the layer loop makes none."""
    from vllm_pudding.depth import step_stats

    texts, _ = prompts
    before = llm.apply_model(step_stats)[0]
    llm.generate(texts, greedy(MAX_TOKENS), use_tqdm=False)
    after = llm.apply_model(step_stats)[0]
    routing_steps = after["route_calls"] - before.get("route_calls", 0)
    assert routing_steps >= 1
    assert after["copies_route"] - before["copies_route"] == 2 * routing_steps
    assert after["copies_plan"] - before["copies_plan"] == after["steps"] - before.get("steps", 0)
    assert after["copies_in_layer_loop"] == 0


def _first_rank_only_routes_as_trained(worker) -> int:
    """Every tensor-parallel rank but the first gets a router that always picks set 0."""
    import torch

    from vllm_pudding import depth

    if worker.rank != 0:
        with torch.no_grad():
            depth._state.router.head.mlp[-1].bias[0] += 1e6
    return worker.rank


def test_tensor_parallel_ranks_follow_the_first_ranks_decision(hidden_dir, llm, prompts,
                                                               monkeypatch):
    """TP=2: both ranks must run the same sets (else their collectives stop matching);
    with rank 1's head skewed, sets and tokens still equal TP=1's, routed and pinned."""
    texts, expected = prompts
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1")  # auto-binding asserts here
    with engine(hidden_dir, skip_tokenizer_init=False, tensor_parallel_size=2,
                distributed_executor_backend="mp") as tp:
        assert sorted(tp.collective_rpc(_first_rank_only_routes_as_trained)) == [0, 1]
        routed = tp.generate(texts, greedy(MAX_TOKENS), use_tqdm=False)
        pinned = tp.generate(texts, [greedy(MAX_TOKENS, set_id=s) for s in expected],
                             use_tqdm=False)
    one = llm.generate(texts, [greedy(MAX_TOKENS, set_id=s) for s in expected], use_tqdm=False)
    assert [o.pudding_set for o in routed] == expected
    assert [_tokens(o) for o in routed] == [_tokens(o) for o in pinned] == \
        [_tokens(o) for o in one]


def test_mixed_batch_routes_only_unpinned_and_explicit_wins(llm, prompts):
    texts, expected = prompts
    other = [(s + 1) % len(HIDDEN_SETS) for s in expected]
    params = [greedy(MAX_TOKENS, set_id=other[i]) if i % 2 else greedy(MAX_TOKENS)
              for i in range(len(texts))]
    before = _routed_rows(llm)
    outs = llm.generate(texts, params, use_tqdm=False)
    assert _routed_rows(llm) - before == (len(texts) + 1) // 2
    assert [o.pudding_set for o in outs] == [other[i] if i % 2 else s
                                              for i, s in enumerate(expected)]
    assert [o.pudding_routed for o in outs] == [not i % 2 for i in range(len(texts))]


def test_chunked_prompt_is_routed_on_its_first_chunk(llm, prompts):
    texts, expected = prompts
    long_text = " ".join([texts[-1]] * 30)  # > 2 chunks of CHUNK_BUDGET tokens
    assert len(llm.get_tokenizer()(long_text)["input_ids"]) > 2 * CHUNK_BUDGET
    before = _routed_rows(llm)
    (out,) = llm.generate([long_text], greedy(MAX_TOKENS), use_tqdm=False)
    assert _routed_rows(llm) - before == 1
    (pinned,) = llm.generate([long_text], greedy(MAX_TOKENS, set_id=out.pudding_set),
                             use_tqdm=False)
    assert _tokens(out) == _tokens(pinned)
    assert out.pudding_set == expected[-1]


def test_repeated_prompt_is_routed_again_not_served_from_cache(llm, prompts):
    texts, expected = prompts
    first = llm.generate(texts[:1], greedy(MAX_TOKENS), use_tqdm=False)
    before = _routed_rows(llm)
    again = llm.generate(texts[:1], greedy(MAX_TOKENS), use_tqdm=False)
    assert _routed_rows(llm) - before == 1
    assert again[0].pudding_set == first[0].pudding_set == expected[0]
    assert _tokens(again[0]) == _tokens(first[0])
    assert again[0].num_cached_tokens == 0


def test_caller_cannot_send_the_internal_route_key(pudding_llm):
    from vllm import SamplingParams

    bad = SamplingParams(max_tokens=2, extra_args={"pudding_route": True})
    with pytest.raises(ValueError, match="prompt 0: pudding_route is set by vllm-pudding"):
        pudding_llm.generate([{"prompt_token_ids": [5, 6, 7]}], bad, use_tqdm=False)


@pytest.fixture(scope="module")
def serving_dir(hidden_dir, tmp_path_factory):
    from vllm_pudding.search.serving_pool import build_serving_dir

    return build_serving_dir(hidden_dir, SUBSET, tmp_path_factory.mktemp("serving") / "pd")


SUBSET = (1, 2)  # [[1, 3], [1, 4]]: both omit layer 1, which the serving dir never builds


def test_serving_dir_keeps_the_subset_and_slices_its_router(serving_dir, planted):
    import torch

    from vllm_pudding.artifact import load_pudding_dir
    from vllm_pudding.router.runtime import Router
    from vllm_pudding.router.spec import load_spec
    from vllm_pudding.search.serving_pool import restricted_choice

    pool = load_pudding_dir(serving_dir)
    assert pool.omission_sets == [HIDDEN_SETS[i] for i in SUBSET]
    assert pool.omitted_by_all() == {1}
    rdir = serving_dir / pool.router.path
    sub = Router(rdir, load_spec(rdir, pool.omission_sets), serving_dir)
    x = torch.randn(64, sub.spec.feature_dim)
    full = planted[1]
    with torch.no_grad():
        assert torch.allclose(sub.head(x), full(x)[:, list(SUBSET)])
    picked = restricted_choice(full(x).detach(), SUBSET)
    assert [SUBSET[i] for i in sub.head.route(x)] == picked.tolist()


def test_serving_dir_routes_in_engine_like_the_restricted_head(serving_dir, llm, planted,
                                                               prompts):
    from vllm_pudding.search.serving_pool import restricted_choice

    texts, _ = prompts
    _, head, enc = planted
    expected = [SUBSET.index(s) for s in restricted_choice(head(enc(texts)).detach(), SUBSET)]
    with engine(serving_dir, skip_tokenizer_init=False) as sub:
        routed = sub.generate(texts, greedy(MAX_TOKENS), use_tqdm=False)
    assert [o.pudding_set for o in routed] == expected
    assert len(set(expected)) == len(SUBSET)
    full = llm.generate(texts, [greedy(MAX_TOKENS, set_id=SUBSET[s]) for s in expected],
                        use_tqdm=False)
    assert [_tokens(o) for o in routed] == [_tokens(o) for o in full]
