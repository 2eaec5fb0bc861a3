"""Offline batch: one `LLM.generate` call that mixes pinned and routed prompts.

Every other prompt pins an omission set (`extra_args={"pudding_set": s}`); the rest name
none, so the pudding dir's router picks their set (the default dir's hidden router
decides inside the engine, from the first prefill chunk). One continuous batch runs each
request at its own depth; every output says which set it ran (`pudding_set`) and whether
the router chose it (`pudding_routed`).

    .venv/bin/python examples/offline_batch.py                 # the default pudding dir
    .venv/bin/python examples/offline_batch.py --model PUDDING_DIR --max-tokens 32

`--enforce-eager` skips compiling the layers at start (faster start, slower steps).
"""

from __future__ import annotations

import argparse
import os

QUESTIONS = [
    "Question: Which gas do plants absorb from the air?\nAnswer:",
    "Question: What is the capital of France?\nAnswer:",
    "Question: Where do polar bears live?\nAnswer:",
    "Question: What do bees make?\nAnswer:",
    "Question: Why does ice float on water?\nAnswer:",
    "Question: Which planet is closest to the sun?\nAnswer:",
    "Question: What is 12 plus 30?\nAnswer:",
    "Question: What color is the sky on a clear day?\nAnswer:",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="pudding model dir (default: the default pudding dir)")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--num-prompts", type=int, default=len(QUESTIONS))
    parser.add_argument("--enforce-eager", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # CPU vLLM needs a KV size

    from vllm import LLM, SamplingParams

    from vllm_pudding.artifact import load_pudding_dir
    from vllm_pudding.default_pudding import ensure_default_pudding_dir

    model = args.model or str(ensure_default_pudding_dir())
    pool = load_pudding_dir(model)
    prompts = (QUESTIONS * (1 + args.num_prompts // len(QUESTIONS)))[:args.num_prompts]
    # even prompts: the router decides; odd prompts: pinned, spread over the pool's sets
    pins = [None if i % 2 == 0 else (i // 2) % len(pool.omission_sets)
            for i in range(len(prompts))]
    params = [SamplingParams(max_tokens=args.max_tokens, temperature=0.0,
                             extra_args=None if s is None else {"pudding_set": s})
              for s in pins]

    llm = LLM(model=model, max_model_len=1024, seed=0, enforce_eager=args.enforce_eager)
    outputs = llm.generate(prompts, params)
    for prompt, pin, out in zip(prompts, pins, outputs):
        how = "routed" if out.pudding_routed else ("pinned" if pin is not None else "default")
        assert pin is None or out.pudding_set == pin, "a pinned request runs its own set"
        question = prompt.split("\n")[0].removeprefix("Question: ")
        print(f"[set {out.pudding_set}, {how}] omits {pool.omission_sets[out.pudding_set]}: "
              f"{question} ->{out.outputs[0].text.rstrip()!r}")


if __name__ == "__main__":
    main()
