"""Cross-check with HF transformers: a Llama with S's layers deleted, greedy, fp32.

Independent of vLLM (looser tolerance: different kernels): PuDDing's set-S output
must follow what the HF reference model generates with those layers removed.
"""

import pytest

from conftest import TINY_SETS
from tiny_models import hf_greedy, hf_without_layers
from engines import greedy, token_prompts, tokens_and_logprobs

PROMPTS = token_prompts([6, 40], seed=5)
STEPS = 8


@pytest.mark.parametrize("set_id", range(len(TINY_SETS)))
def test_matches_hf_with_layers_removed(pudding_llm, tiny_base, set_id):
    for prompt in PROMPTS:
        out = pudding_llm.generate([prompt], greedy(STEPS, set_id), use_tqdm=False)[0]
        tokens, lps = tokens_and_logprobs(out)
        ref_tokens, ref_lps = hf_greedy(hf_without_layers(tiny_base, TINY_SETS[set_id]),
                                        prompt["prompt_token_ids"], STEPS)
        assert tokens == ref_tokens
        assert max(abs(a - b) for a, b in zip(lps, ref_lps)) < 1e-2
