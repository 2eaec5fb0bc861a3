"""The main demo: one offline `LLM.generate` batch, every request at its own depth.

Builds the default pudding dir if needed (SmolLM2-135M-Instruct, converted once),
runs a batch of chat prompts, half routed by the dir's router (no `pudding_set`:
the default dir's hidden router picks each one's set inside the engine, from the
first prefill chunk's states after the layers every set keeps) and half pinned to
sets, prints each request's set (as the output reports it), omitted layers, answer
and the batch's speed, then the same batch on dense stock vLLM for comparison.

Command::

    pudding demo            # or: python -m vllm_pudding.demo
"""

from __future__ import annotations

import os
import time

QUESTIONS = [
    "What is the capital of France?",
    "Which gas do plants absorb from the air?",
    "Write one sentence about the sea.",
    "What is 12 plus 30?",
    "Name a planet in our solar system.",
    "What do bees make?",
    "Give me a synonym for happy.",
    "What color is the sky on a clear day?",
]
MAX_TOKENS = 48


def _engine(model: str):
    from vllm import LLM

    return LLM(model=model, dtype="bfloat16", max_model_len=1024, enforce_eager=True,
               kv_cache_memory_bytes=512 * 1024 * 1024, seed=0)


def _timed_chat(llm, params):
    messages = [[{"role": "user", "content": q}] for q in QUESTIONS]
    llm.chat(messages[:2], params[:2], use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.chat(messages, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    return outs, sum(len(o.outputs[0].token_ids) for o in outs) / seconds


def _params(set_id):
    from vllm import SamplingParams

    extra = None if set_id is None else {"pudding_set": set_id}
    return SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, extra_args=extra)


def main() -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm_pudding.artifact import load_pudding_dir
    from vllm_pudding.default_model import ensure_default_model
    from vllm_pudding.default_pudding import ensure_default_pudding_dir

    pudding_dir = ensure_default_pudding_dir()
    pool = load_pudding_dir(pudding_dir)
    half = len(QUESTIONS) // 2
    set_ids = [None] * half + [i % len(pool.omission_sets) for i in range(len(QUESTIONS) - half)]
    llm = _engine(str(pudding_dir))
    outs, pudding_tps = _timed_chat(llm, [_params(s) for s in set_ids])
    _, one_set_tps = _timed_chat(llm, [_params(pool.default_set)] * len(QUESTIONS))
    llm.llm_engine.engine_core.shutdown()
    del llm
    dense = _engine(str(ensure_default_model()))
    dense_outs, dense_tps = _timed_chat(dense, [_params(None)] * len(QUESTIONS))
    _report(pool, set_ids, outs, dense_outs, (pudding_tps, one_set_tps, dense_tps), pudding_dir)


def _report(pool, set_ids, outs, dense_outs, speeds, pudding_dir) -> None:
    mixed_tps, one_set_tps, dense_tps = speeds
    print(f"\npudding dir: {pudding_dir}" + ("  (provisional pool)" if pool.provisional else ""))
    router = f"{pool.router.kind} router" if pool.router else "no router (default set)"
    print(f"pool: {len(pool.omission_sets)} sets, k={pool.k} of 30 layers; {router}\n")
    for q, s, out, dense in zip(QUESTIONS, set_ids, outs, dense_outs):
        sid = getattr(out, "pudding_set", pool.default_set)
        how = "routed" if getattr(out, "pudding_routed", False) else (
            "pinned" if s is not None else "default")
        print(f"[set {sid} ({how}), omits {pool.omission_sets[sid]}] {q}")
        print(f"    pudding: {out.outputs[0].text.strip()[:160]!r}")
        print(f"    dense:   {dense.outputs[0].text.strip()[:160]!r}")
    print(f"\nbatch of {len(QUESTIONS)}, up to {MAX_TOKENS} tokens each, bf16, "
          f"{os.cpu_count()} CPU cores (single runs; benchmarks/ has the repeated A/B protocol):")
    print(f"  dense vLLM                  {dense_tps:7.1f} tok/s")
    print(f"  pudding, sets mixed above   {mixed_tps:7.1f} tok/s  ({mixed_tps / dense_tps:.2f}x dense)")
    print(f"  pudding, set {pool.default_set} for all      {one_set_tps:7.1f} tok/s  "
          f"({one_set_tps / dense_tps:.2f}x dense)")
    print("A decode step costs about the union of the layers its requests keep: mixing sets "
          "that omit different layers gives back the savings (issue: mixed-set decode).")


if __name__ == "__main__":
    main()
