"""Shared vLLM engine helpers for tests: an engine start costs ~20 s on 2 cores."""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
# LLM.apply_model ships a test function to the worker (inspecting built layers).
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")

KV_BYTES = 64 * 1024 * 1024
CHUNK_BUDGET = 64  # max_num_batched_tokens: a 150-token prompt needs 3 chunks


def engine_kwargs(**overrides):
    kwargs = dict(dtype="float32", max_model_len=512, enforce_eager=True,
                  max_num_batched_tokens=CHUNK_BUDGET, max_num_seqs=16,
                  kv_cache_memory_bytes=KV_BYTES, skip_tokenizer_init=True, seed=0)
    kwargs.update(overrides)
    return kwargs


@contextmanager
def engine(model: str, **overrides):
    """An offline engine, shut down on exit.

    Its engine core runs in this process over vLLM's multiprocessing executor: one spawned
    worker (which holds the model and binds its own OpenMP threads, as on CPU it must)
    instead of an engine-core process that spawns the worker, each re-importing vLLM
    (~10 s apiece on 2 cores). A child that already set VLLM_ENABLE_V1_MULTIPROCESSING=0
    gets the fully in-process engine it asked for.
    """
    from vllm import LLM

    if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
        llm = LLM(model=str(model), **engine_kwargs(**overrides))
    else:
        overrides.setdefault("distributed_executor_backend", "mp")
        with _core_in_this_process():
            llm = LLM(model=str(model), **engine_kwargs(**overrides))
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


@contextmanager
def _core_in_this_process():
    """VLLM_ENABLE_V1_MULTIPROCESSING=0 while an engine is made, and vLLM's env cache
    dropped after: an in-process engine core freezes vllm.envs (`enable_envs_cache`), and
    later engines, servers and tests in this process must read the environment afresh."""
    from vllm import envs

    before = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    envs.disable_envs_cache()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING")
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = before
        envs.disable_envs_cache()


def greedy(max_tokens: int = 12, set_id: int | None = None, **kw):
    from vllm import SamplingParams

    extra = {} if set_id is None else {"pudding_set": set_id}
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=0, ignore_eos=True,
                          detokenize=False, extra_args=extra or None, **kw)


def token_prompts(lengths, seed: int = 0, vocab=(1000, 29000)):
    import random

    from vllm.inputs import TokensPrompt

    rng = random.Random(seed)
    return [TokensPrompt(prompt_token_ids=[rng.randrange(*vocab) for _ in range(n)])
            for n in lengths]


def tokens_and_logprobs(output):
    """(generated token ids, logprob of each chosen token) of one RequestOutput."""
    out = output.outputs[0]
    lps = [step[tok].logprob for tok, step in zip(out.token_ids, out.logprobs)]
    return list(out.token_ids), lps


def kv_capacity_tokens(llm) -> int:
    cache = llm.llm_engine.vllm_config.cache_config
    return cache.num_gpu_blocks * cache.block_size


def built_layers(model):
    """(`LLM.apply_model`) indices of the decoder layers with parameters, and the names of
    the attention modules (the layers that hold KV)."""
    params = sorted({n.split(".")[2] for n, _ in model.named_parameters() if ".layers." in n})
    attn = [n for n, m in model.named_modules() if type(m).__name__ == "Attention"]
    return [int(p) for p in params], attn


def kv_views(model):
    """(`LLM.apply_model`) each attention layer's KV cache: data pointer and shape."""
    attn = [m for _, m in model.named_modules() if type(m).__name__ == "Attention"]
    return [a.kv_cache.data_ptr() for a in attn], [tuple(a.kv_cache.shape) for a in attn]
