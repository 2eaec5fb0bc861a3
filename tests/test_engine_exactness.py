"""A request routed to set S equals the model with S removed, for every architecture
with a tiny model (`tiny_models.ARCHS`: Llama, Qwen2, Gemma 3).

Oracle: the model with S's layers physically removed, each prompt alone: stock vLLM
(plain LlamaForCausalLM) serving the static checkpoint for Llama, HF transformers with
those layers deleted for the other architectures. PuDDing must match it in fp32,
greedy tokens identical and chosen-token logprobs within 1e-3, for a request
alone and inside a mixed batch (every set, a prompt longer than the chunked
prefill budget, so steps mix prefill chunks with decodes). Per architecture, one
PuDDing engine (Llama: the session's shared one) also shows that layers no set keeps
are never built and that its KV blocks hold one slot per layer a set keeps, counted per
KV cache group.
"""

import pytest

from conftest import TINY_LAYERS, TINY_SETS
from engines import (CHUNK_BUDGET, built_layers, engine, greedy, kv_capacity_tokens,
                     kv_views, token_prompts, tokens_and_logprobs)
from server_utils import offline_refs
from tiny_models import ARCHS, hf_greedy, hf_without_layers

LENGTHS = [5, 9, 17, 33, 150, 3]  # 150 > CHUNK_BUDGET: chunked prefill
MAX_TOKENS = 12
ATOL = 1e-3

assert max(LENGTHS) > CHUNK_BUDGET


@pytest.fixture(scope="module")
def prompts():
    return token_prompts(LENGTHS, seed=1)


@pytest.fixture(scope="module", params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def arch_llm(arch, tiny_models, request):
    """This architecture's PuDDing engine: Llama's is the session's shared `pudding_llm`."""
    if arch == "llama":
        yield request.getfixturevalue("pudding_llm")
        return
    with engine(tiny_models(arch).pudding) as llm:
        yield llm


@pytest.fixture(scope="module")
def static_refs(arch, tiny_models, prompts, tmp_path_factory):
    """(set id, prompt index) -> (tokens, logprobs) of the model with the set's layers
    removed, each prompt alone: stock vLLM on each static checkpoint for Llama (in a child
    process with in-process engines: seconds per engine instead of ~25 s); HF transformers
    with the layers deleted for the other architectures (an independent implementation,
    and no engine per set)."""
    models = tiny_models(arch)
    if arch == "llama":
        return offline_refs(models.static, [p["prompt_token_ids"] for p in prompts],
                            MAX_TOKENS, tmp_path_factory.mktemp("refs") / "offline.log")
    refs = {}
    for set_id in models.static:
        model = hf_without_layers(models.base, TINY_SETS[set_id])
        for i, p in enumerate(prompts):
            refs[set_id, i] = hf_greedy(model, p["prompt_token_ids"], MAX_TOKENS)
    return refs


def assert_matches(got, want, what):
    tokens, lps = got
    ref_tokens, ref_lps = want
    assert tokens == ref_tokens, f"{what}: tokens {tokens} != static {ref_tokens}"
    worst = max(abs(a - b) for a, b in zip(lps, ref_lps))
    assert worst <= ATOL, f"{what}: logprob differs by {worst:.2e}"


@pytest.mark.parametrize("set_id", range(len(TINY_SETS)))
def test_alone_matches_static(arch_llm, static_refs, prompts, set_id):
    for i, p in enumerate(prompts):
        out = arch_llm.generate([p], greedy(MAX_TOKENS, set_id), use_tqdm=False)[0]
        assert_matches(tokens_and_logprobs(out), static_refs[set_id, i], f"set {set_id} prompt {i}")


def _stats(llm):
    from vllm_pudding.depth import step_stats

    return llm.apply_model(step_stats)[0]


def test_mixed_batch_matches_static(arch_llm, static_refs, prompts):
    before = _stats(arch_llm)
    jobs = [(i, s) for i in range(len(prompts)) for s in range(len(TINY_SETS))]
    outs = arch_llm.generate([prompts[i] for i, _ in jobs],
                                [greedy(MAX_TOKENS, s) for _, s in jobs], use_tqdm=False)
    for (i, s), out in zip(jobs, outs):
        assert_matches(tokens_and_logprobs(out), static_refs[s, i], f"mixed: set {s} prompt {i}")
    after = _stats(arch_llm)
    key = "mixed_set_prefill_decode_steps"  # the batch really mixed sets, prefills and decodes
    assert after.get(key, 0) > before.get(key, 0), after


def test_mixed_batch_interleaved_orders(arch_llm, static_refs, prompts):
    """Another batch composition: sets and lengths interleaved, 12 requests."""
    jobs = [(i % len(prompts), (i * 2 + 1) % len(TINY_SETS)) for i in range(12)]
    outs = arch_llm.generate([prompts[i] for i, _ in jobs],
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


def test_default_set_without_arg(arch_llm, static_refs, prompts):
    out = arch_llm.generate([prompts[2]], greedy(MAX_TOKENS), use_tqdm=False)[0]
    assert_matches(tokens_and_logprobs(out), static_refs[0, 2], "default set")


def test_prefix_cache_never_crosses_sets(arch_llm, static_refs, prompts):
    """Same long prompt under set 1 then set 2 (prefix caching is on): each exact."""
    for s in (1, 2, 1):
        out = arch_llm.generate([prompts[4]], greedy(MAX_TOKENS, s), use_tqdm=False)[0]
        assert_matches(tokens_and_logprobs(out), static_refs[s, 4], f"cached set {s}")


def test_layer_omitted_by_all_has_no_params_or_kv(arch_llm):
    layers, attn = arch_llm.apply_model(built_layers)[0]
    assert layers == [0, 2, 3, 4, 5]
    assert not any(".layers.1." in name for name in attn)
    assert len(attn) == TINY_LAYERS - 1


KV_LAYOUT = {  # built layers 0, 2-5; sets keep 4 of them
    "llama": {"slots": 4, "groups": [[0, 2, 3, 4, 5]]},
    "qwen2": {"slots": 4, "groups": [[0, 2, 3, 4, 5]]},
    # sliding-window layers 0, 3, 4 and full-attention layers 2, 5: vLLM makes groups of
    # 2 layers (the smaller type's count), [0, 4], [3], [2, 5]; sets keep at most 2 layers
    # of a group (every set keeps 2 and 5): 2 slots per block, not L - k = 4. Here that
    # equals vLLM's own 2 pages per block (saving when slots < group size: test_config.py)
    "gemma3": {"slots": 2, "groups": [[0, 4], [2, 5], [3]]},
}


def test_kv_capacity_counts_slots_per_group(arch, arch_llm, pudding_llm):
    """KV slots per block, counted per KV cache group, and the tokens that fit: the KV
    memory over `slots` layer pages per token (Llama, Qwen2: L - k layers of one group;
    Gemma 3: groups of two layers). Every tiny model has the same KV bytes per token and
    layer (2 KV heads of 32, fp32) and the same KV memory, so tokens x slots is the Llama
    engine's, whose capacity tests/test_engine_structure.py checks against stock vLLM."""
    from vllm_pudding.depth import kv_layout

    layout = arch_llm.apply_model(kv_layout)[0]
    want = KV_LAYOUT[arch]
    assert layout["slots"] == want["slots"], layout
    assert sorted(layout["groups"]) == want["groups"], layout
    llama = KV_LAYOUT["llama"]["slots"] * kv_capacity_tokens(pudding_llm)
    ratio = want["slots"] * kv_capacity_tokens(arch_llm) / llama
    assert 0.99 <= ratio <= 1.01, (kv_capacity_tokens(arch_llm), llama)


def test_all_layers_share_one_slot_region(arch_llm):
    """Every attention layer views the same (L - k) x blocks region (no per-layer pages)."""
    ptrs, shapes = arch_llm.apply_model(kv_views)[0]
    assert len(set(ptrs)) == 1 and len(set(map(tuple, shapes))) == 1, (ptrs, shapes)


@pytest.fixture(scope="module")
def compiled_llm(arch, tiny_models):
    """PuDDing without enforce_eager (CPU default): each kept layer's body is compiled.
    Llama only: layer_compile wraps each architecture's decoder layer alike, and a
    compiled engine start costs CI time."""
    if arch != "llama":
        pytest.skip("compiled layers are checked on Llama only")
    with engine(tiny_models(arch).pudding, enforce_eager=False) as llm:
        yield llm


def _compiled_layers(model):
    """(wrapped layers, still compiled, compiled entries per wrapped layer, calls that
    ran eager because their inputs differed from the compiled graph's, layers whose
    calls run dynamo's code directly, and those calls)."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from vllm_pudding.layer_compile import CompiledForward

    wrapped = [layer.forward for layer in model.model.layers
               if isinstance(layer.forward, CompiledForward)]
    entries = [len(_debug_get_cache_entry_list(w.eager.__func__.__code__)) for w in wrapped]
    return (len(wrapped), sum(w.compiled is not None for w in wrapped), entries,
            sum(w.eager_calls for w in wrapped), sum(w.direct is not None for w in wrapped),
            sum(w.direct_calls for w in wrapped))


def test_compiled_layers_mixed_batch_matches_static(compiled_llm, static_refs, prompts):
    """The oracle holds with compiled layer bodies too, and compiled code really ran;
    every layer compiled one graph at engine start (all batch sizes, whole batch or row
    subset), nothing compiles while serving, and every call ran that graph unguarded,
    as dynamo's code called directly (no frame evaluation)."""
    _, _, at_start, _, _, direct_before = compiled_llm.apply_model(_compiled_layers)[0]
    jobs = [(i, s) for i in range(len(prompts)) for s in range(len(TINY_SETS))]
    outs = compiled_llm.generate([prompts[i] for i, _ in jobs],
                                 [greedy(MAX_TOKENS, s) for _, s in jobs], use_tqdm=False)
    for (i, s), out in zip(jobs, outs):
        assert_matches(tokens_and_logprobs(out), static_refs[s, i], f"compiled: set {s} prompt {i}")
    wrapped, still_compiled, entries, eager_calls, direct, direct_calls = \
        compiled_llm.apply_model(_compiled_layers)[0]
    built = sum(1 for layer in range(TINY_LAYERS) if not all(layer in s for s in TINY_SETS))
    assert wrapped == still_compiled == built, (wrapped, still_compiled, built)
    assert at_start == entries == [1] * built, (at_start, entries)
    assert eager_calls == 0, "every call ran the layer's one graph (no guard check)"
    assert direct == built and direct_calls > direct_before, (direct, direct_calls)


def test_eager_engines_compile_nothing(arch_llm):
    wrapped = arch_llm.apply_model(_compiled_layers)[0][0]
    assert wrapped == 0
