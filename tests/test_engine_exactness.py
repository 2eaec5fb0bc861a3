"""A request routed to set S equals stock vLLM on the checkpoint with S removed.

Oracle: stock vLLM (plain LlamaForCausalLM) serving a checkpoint whose layers of
S were physically removed, each prompt alone. PuDDing must match it in fp32,
greedy tokens identical and chosen-token logprobs within 1e-3, for a request
alone and inside a mixed batch (every set, a prompt longer than the chunked
prefill budget, so steps mix prefill chunks with decodes).
"""

import pytest

from conftest import TINY_LAYERS, TINY_SETS
from engines import CHUNK_BUDGET, engine, greedy, token_prompts, tokens_and_logprobs

LENGTHS = [5, 9, 17, 33, 150, 3]  # 150 > CHUNK_BUDGET: chunked prefill
MAX_TOKENS = 12
ATOL = 1e-3

assert max(LENGTHS) > CHUNK_BUDGET


@pytest.fixture(scope="module")
def prompts():
    return token_prompts(LENGTHS, seed=1)


@pytest.fixture(scope="module")
def static_refs(tiny_static, prompts):
    """(set id, prompt index) -> (tokens, logprobs) from stock vLLM, each prompt alone."""
    refs = {}
    for set_id, path in tiny_static.items():
        with engine(path) as llm:
            for i, p in enumerate(prompts):
                refs[set_id, i] = tokens_and_logprobs(llm.generate([p], greedy(MAX_TOKENS),
                                                                   use_tqdm=False)[0])
    return refs


def assert_matches(got, want, what):
    tokens, lps = got
    ref_tokens, ref_lps = want
    assert tokens == ref_tokens, f"{what}: tokens {tokens} != static {ref_tokens}"
    worst = max(abs(a - b) for a, b in zip(lps, ref_lps))
    assert worst <= ATOL, f"{what}: logprob differs by {worst:.2e}"


@pytest.mark.parametrize("set_id", range(len(TINY_SETS)))
def test_alone_matches_static(pudding_llm, static_refs, prompts, set_id):
    for i, p in enumerate(prompts):
        out = pudding_llm.generate([p], greedy(MAX_TOKENS, set_id), use_tqdm=False)[0]
        assert_matches(tokens_and_logprobs(out), static_refs[set_id, i], f"set {set_id} prompt {i}")


def _stats(llm):
    from vllm_pudding.depth import step_stats

    return llm.apply_model(step_stats)[0]


def test_mixed_batch_matches_static(pudding_llm, static_refs, prompts):
    before = _stats(pudding_llm)
    jobs = [(i, s) for i in range(len(prompts)) for s in range(len(TINY_SETS))]
    outs = pudding_llm.generate([prompts[i] for i, _ in jobs],
                                [greedy(MAX_TOKENS, s) for _, s in jobs], use_tqdm=False)
    for (i, s), out in zip(jobs, outs):
        assert_matches(tokens_and_logprobs(out), static_refs[s, i], f"mixed: set {s} prompt {i}")
    after = _stats(pudding_llm)
    key = "mixed_set_prefill_decode_steps"  # the batch really mixed sets, prefills and decodes
    assert after.get(key, 0) > before.get(key, 0), after


def test_mixed_batch_interleaved_orders(pudding_llm, static_refs, prompts):
    """Another batch composition: sets and lengths interleaved, 12 requests."""
    jobs = [(i % len(prompts), (i * 2 + 1) % len(TINY_SETS)) for i in range(12)]
    outs = pudding_llm.generate([prompts[i] for i, _ in jobs],
                                [greedy(MAX_TOKENS, s) for _, s in jobs], use_tqdm=False)
    for (i, s), out in zip(jobs, outs):
        assert_matches(tokens_and_logprobs(out), static_refs[s, i], f"set {s} prompt {i}")


def test_sets_give_different_outputs(static_refs, prompts):
    """The oracle is only meaningful if depth changes what the model says."""
    differing = 0
    for i in range(len(prompts)):
        outs = {tuple(static_refs[s, i][0]) for s in range(len(TINY_SETS))}
        differing += len(outs) == len(TINY_SETS)
        assert len(set(static_refs[0, i][0])) > 1, "greedy output is one repeated token"
    assert differing >= len(prompts) - 1


def test_default_set_without_arg(pudding_llm, static_refs, prompts):
    out = pudding_llm.generate([prompts[2]], greedy(MAX_TOKENS), use_tqdm=False)[0]
    assert_matches(tokens_and_logprobs(out), static_refs[0, 2], "default set")


def test_prefix_cache_never_crosses_sets(pudding_llm, static_refs, prompts):
    """Same long prompt under set 1 then set 2 (prefix caching is on): each exact."""
    for s in (1, 2, 1):
        out = pudding_llm.generate([prompts[4]], greedy(MAX_TOKENS, s), use_tqdm=False)[0]
        assert_matches(tokens_and_logprobs(out), static_refs[s, 4], f"cached set {s}")


@pytest.fixture(scope="module")
def compiled_llm(tiny_pudding):
    """PuDDing without enforce_eager (CPU default): each kept layer's body is compiled."""
    with engine(tiny_pudding, enforce_eager=False) as llm:
        yield llm


def _compiled_layers(model):
    """(wrapped layers, still compiled, compiled entries per wrapped layer)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from vllm_pudding.layer_compile import CompiledForward

    wrapped = [layer.forward for layer in model.model.layers
               if isinstance(layer.forward, CompiledForward)]
    entries = [len(_debug_get_cache_entry_list(w.eager.__func__.__code__)) for w in wrapped]
    return len(wrapped), sum(w.compiled is not None for w in wrapped), entries


def test_compiled_layers_mixed_batch_matches_static(compiled_llm, static_refs, prompts):
    """The oracle holds with compiled layer bodies too, and compiled code really ran;
    every layer compiled one graph at engine start (all batch sizes, whole batch or row
    subset) and nothing compiles while serving."""
    _, _, at_start = compiled_llm.apply_model(_compiled_layers)[0]
    jobs = [(i, s) for i in range(len(prompts)) for s in range(len(TINY_SETS))]
    outs = compiled_llm.generate([prompts[i] for i, _ in jobs],
                                 [greedy(MAX_TOKENS, s) for _, s in jobs], use_tqdm=False)
    for (i, s), out in zip(jobs, outs):
        assert_matches(tokens_and_logprobs(out), static_refs[s, i], f"compiled: set {s} prompt {i}")
    wrapped, still_compiled, entries = compiled_llm.apply_model(_compiled_layers)[0]
    built = sum(1 for layer in range(TINY_LAYERS) if not all(layer in s for s in TINY_SETS))
    assert wrapped == still_compiled == built, (wrapped, still_compiled, built)
    assert at_start == entries == [1] * built, (at_start, entries)


def test_eager_engines_compile_nothing(pudding_llm):
    wrapped, _, _ = pudding_llm.apply_model(_compiled_layers)[0]
    assert wrapped == 0
