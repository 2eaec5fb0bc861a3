"""What the engine builds and how it treats bad input.

- vLLM's KV capacity grows by L / (L - k) (what is built, per architecture:
  tests/test_engine_exactness.py);
- a pool whose sets omit nothing equals stock vLLM Llama token for token;
- a bad set id, or an unknown or internal `pudding_*` key, fails its own call with a
  ValueError naming the prompt (and the key), and the engine keeps serving; a
  malformed pudding section fails before any engine starts.
"""

import json
import shutil

import pytest

from conftest import TINY_LAYERS, TINY_SETS
from engines import engine, greedy, kv_capacity_tokens, token_prompts
from server_utils import offline_run

PROMPTS = token_prompts([7, 20, 90], seed=3)


@pytest.fixture(scope="module")
def offline(tiny_base, tmp_path_factory):
    """Stock vLLM on the unpruned base (key 0) and PuDDing with a pool whose one set omits
    nothing (key 1), each prompt alone (in-process engines in a child: seconds each):
    (refs, KV capacity per key)."""
    from vllm_pudding.artifact import build_pudding_dir
    from vllm_pudding.config import PuddingConfig

    root = tmp_path_factory.mktemp("k0")
    k0 = build_pudding_dir(tiny_base, PuddingConfig(omission_sets=[[]]), root / "pud")
    return offline_run({0: tiny_base, 1: k0}, [p["prompt_token_ids"] for p in PROMPTS], 10,
                       root / "offline.log")


@pytest.fixture(scope="module")
def stock_base(offline):
    """Stock vLLM on the unpruned base: outputs and KV capacity."""
    refs, capacity = offline
    return [refs[0, i] for i in range(len(PROMPTS))], capacity[0]


def test_kv_capacity_holds_only_kept_layers(pudding_llm, stock_base):
    """Each block holds L - k layer slots: L / (L - k) times the dense token capacity."""
    _, dense_tokens = stock_base
    k = len(TINY_SETS[0])
    ratio = kv_capacity_tokens(pudding_llm) / dense_tokens
    assert ratio >= TINY_LAYERS / (TINY_LAYERS - k) * 0.99, ratio
    assert ratio <= TINY_LAYERS / (TINY_LAYERS - k) * 1.01, ratio


def test_pool_keeping_every_layer_equals_stock(offline, stock_base):
    refs, _ = offline
    ref, _ = stock_base
    for i, want in enumerate(ref):
        tokens, lps = refs[1, i]
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


@pytest.mark.parametrize("extra, message", [
    ({"pudding_sett": 1}, r"unknown key 'pudding_sett'"),
    ({"Pudding_Set": 1}, r"unknown key 'Pudding_Set'"),
    ({"pudding_set": 1, "pudding_depth": 3}, r"unknown key 'pudding_depth'"),
    ({"pudding_route": True}, r"pudding_route is set by vllm-pudding itself, not by requests"),
    ({"pudding_set": 1, "pudding_routed": True}, r"pudding_routed is set by vllm-pudding itself, "
                                                 r"not by requests"),
    ({"pudding_route_seconds": 0.1}, r"pudding_route_seconds is set by vllm-pudding itself, "
                                     r"not by requests"),
])
def test_unknown_or_internal_key_names_prompt_key_and_known_keys(pudding_llm, extra, message):
    """A mistyped key must not run the default set silently; internal keys would fake the
    routing decision that outputs and metrics report. Nothing runs."""
    from vllm import SamplingParams

    bad = SamplingParams(max_tokens=4, extra_args=extra)
    with pytest.raises(ValueError, match=r"prompt 1: " + message
                       + r"; known pudding keys: pudding_set"):
        pudding_llm.generate(PROMPTS, [greedy(4, 0), bad, greedy(4, 2)], use_tqdm=False)
    assert pudding_llm.llm_engine.get_num_unfinished_requests() == 0


def test_boolean_set_is_refused_and_other_keys_pass(pudding_llm):
    """True is not set 1 (online, JSON true must agree: tests/test_server.py)."""
    from vllm import SamplingParams

    with pytest.raises(ValueError, match=r"prompt 0: pudding_set must be an integer set id, "
                                         r"got True"):
        pudding_llm.generate(PROMPTS[:1], SamplingParams(max_tokens=2, extra_args={
            "pudding_set": True}), use_tqdm=False)
    # keys outside the pudding_ prefix belong to other extensions: left alone
    other = greedy(4, 2)
    other.extra_args["my_extension_arg"] = 1
    got = pudding_llm.generate(PROMPTS[:1], other, use_tqdm=False)[0]
    want = pudding_llm.generate(PROMPTS[:1], greedy(4, 2), use_tqdm=False)[0]
    assert got.pudding_set == 2 and got.outputs[0].token_ids == want.outputs[0].token_ids


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
