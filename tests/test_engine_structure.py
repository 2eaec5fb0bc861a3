"""What the engine builds and how it treats bad input.

- layers no candidate keeps have no parameters and no KV; vLLM's KV capacity grows;
- a pool whose sets omit nothing equals stock vLLM Llama token for token;
- a bad set id fails its own call with a ValueError naming the prompt, and the
  engine keeps serving; a malformed pudding section fails before any engine starts.
"""

import json
import shutil

import pytest

from conftest import TINY_LAYERS, TINY_SETS
from engines import engine, greedy, kv_capacity_tokens, token_prompts, tokens_and_logprobs

PROMPTS = token_prompts([7, 20, 90], seed=3)


@pytest.fixture(scope="module")
def stock_base(tiny_base):
    """Stock vLLM on the unpruned base: outputs and KV capacity."""
    with engine(tiny_base) as llm:
        outs = llm.generate(PROMPTS, greedy(10), use_tqdm=False)
        return [tokens_and_logprobs(o) for o in outs], kv_capacity_tokens(llm)


def _built_layers(model):
    params = sorted({n.split(".")[2] for n, _ in model.named_parameters() if ".layers." in n})
    attn = [n for n, m in model.named_modules() if type(m).__name__ == "Attention"]
    return [int(p) for p in params], attn


def _kv_views(model):
    attn = [m for _, m in model.named_modules() if type(m).__name__ == "Attention"]
    return [a.kv_cache.data_ptr() for a in attn], [tuple(a.kv_cache.shape) for a in attn]


def test_layer_omitted_by_all_has_no_params_or_kv(pudding_llm):
    layers, attn = pudding_llm.apply_model(_built_layers)[0]
    assert layers == [0, 2, 3, 4, 5]
    assert not any(".layers.1." in name for name in attn)
    assert len(attn) == TINY_LAYERS - 1


def test_kv_capacity_holds_only_kept_layers(pudding_llm, stock_base):
    """Each block holds L - k layer slots: L / (L - k) times the dense token capacity."""
    _, dense_tokens = stock_base
    k = len(TINY_SETS[0])
    ratio = kv_capacity_tokens(pudding_llm) / dense_tokens
    assert ratio >= TINY_LAYERS / (TINY_LAYERS - k) * 0.99, ratio
    assert ratio <= TINY_LAYERS / (TINY_LAYERS - k) * 1.01, ratio


def test_all_layers_share_one_slot_region(pudding_llm):
    """Every attention layer views the same (L - k) x blocks region (no per-layer pages)."""
    ptrs, shapes = pudding_llm.apply_model(_kv_views)[0]
    assert len(set(ptrs)) == 1 and len(set(map(tuple, shapes))) == 1, (ptrs, shapes)



def test_pool_keeping_every_layer_equals_stock(tiny_base, tmp_path_factory, stock_base):
    from vllm_pudding.artifact import build_pudding_dir
    from vllm_pudding.config import PuddingConfig

    path = build_pudding_dir(tiny_base, PuddingConfig(omission_sets=[[]]),
                             tmp_path_factory.mktemp("k0") / "pud")
    with engine(path) as llm:
        outs = llm.generate(PROMPTS, [greedy(10, 0), greedy(10), greedy(10, 0)], use_tqdm=False)
    ref, _ = stock_base
    for got, want in zip(outs, ref):
        tokens, lps = tokens_and_logprobs(got)
        assert tokens == want[0]
        assert max(abs(a - b) for a, b in zip(lps, want[1])) <= 1e-3


@pytest.mark.parametrize("bad", [len(TINY_SETS), -1, "abc", 1.5])
def test_bad_set_id_names_prompt_and_engine_survives(pudding_llm, bad):
    params = [greedy(4, 0), greedy(4, bad), greedy(4, 2)]
    with pytest.raises(ValueError, match=r"prompt 1: pudding_set"):
        pudding_llm.generate(PROMPTS, params, use_tqdm=False)
    assert pudding_llm.llm_engine.get_num_unfinished_requests() == 0
    outs = pudding_llm.generate(PROMPTS, [greedy(4, 0)] * 3, use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 4 for o in outs)


def test_malformed_section_fails_before_engine(tiny_pudding, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_pudding, bad, symlinks=True)
    config = json.loads((bad / "config.json").read_text())
    config["pudding"]["omission_sets"] = [[1, 2], [3]]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="differ in size") as info:
        with engine(bad):
            pass
    assert isinstance(info.value, ValueError) or "ValueError" in repr(info.value)
