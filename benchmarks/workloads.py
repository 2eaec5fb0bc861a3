"""The seeded workloads of ../shared/BENCHMARKS.md, as token ids.

Why token ids: every engine gets byte-identical inputs, and tokenization stays out of
the timed region. All text comes from the six tasks' validation prompts
(`vllm_pudding.data.olmo`), never from train splits. Each workload is a
`Case(prompts, out)`: the prompts of one `llm.generate` call and the number of
tokens every request generates (ignore_eos, so the count is exact).
"""

from __future__ import annotations

import random
from typing import NamedTuple

PREFILL = dict(num=32, prompt=256, out=1)
DECODE = dict(num=16, prompt=32, out=128)
LATENCY_PREFILL = (128, 256, 512)  # batch 1, 1 output token
LATENCY_GENERATE = dict(prompt=128, out=(128, 256, 512))  # batch 1
SERVING = dict(num=256, out=64)  # real prompts, all submitted at once

QUICK = {  # smoke-run sizes: exercise every code path in seconds, measure nothing
    "prefill": dict(num=4, prompt=32, out=1),
    "decode": dict(num=2, prompt=8, out=8),
    "latency_prefill": (16, 32),
    "latency_generate": dict(prompt=16, out=(8, 16)),
    "serving": dict(num=20, out=8),
}


class Case(NamedTuple):
    prompts: list[list[int]]
    out: int


def sizes(quick: bool) -> dict:
    """Workload sizes by name: the protocol's, or the smoke run's."""
    if quick:
        return QUICK
    return {"prefill": PREFILL, "decode": DECODE, "latency_prefill": LATENCY_PREFILL,
            "latency_generate": LATENCY_GENERATE, "serving": SERVING}


def _task_texts(rng: random.Random, per_task: int) -> dict[str, list[str]]:
    from vllm_pudding.data.olmo import TASKS, validation_prompts

    out = {}
    for task in TASKS:
        texts = validation_prompts(task, limit=200)
        rng.shuffle(texts)
        out[task] = texts[:per_task]
    return out


def workload_tokens(tokenizer, num: int, length: int, seed: int) -> list[list[int]]:
    """`num` windows of `length` token ids from the six tasks' validation prompts."""
    rng = random.Random(seed)
    stream: list[int] = []
    for texts in _task_texts(rng, 60).values():
        stream += tokenizer("\n\n".join(texts))["input_ids"]
    starts = [rng.randrange(0, len(stream) - length) for _ in range(num)]
    return [stream[s:s + length] for s in starts]


def serving_prompts(tokenizer, num: int, seed: int, max_len: int) -> list[list[int]]:
    """`num` whole validation prompts, spread evenly over the six tasks, shuffled.

    Real prompt lengths (BoolQ passages are long, ARC questions short); a prompt over
    `max_len` tokens keeps its last `max_len` (none of the six tasks' prompts is near
    the default limit).
    """
    rng = random.Random(seed)
    per_task = -(-num // 6)
    by_task = _task_texts(rng, per_task)
    texts = [ts[i] for i in range(per_task) for ts in by_task.values()][:num]  # round robin
    rng.shuffle(texts)
    return [tokenizer(t)["input_ids"][-max_len:] for t in texts]


def protocol_cases(tokenizer, seed: int, quick: bool = False) -> dict[str, Case]:
    """bench_engine.py's throughput workloads: 'prefill' and 'decode'."""
    s = sizes(quick)
    return {"prefill": Case(workload_tokens(tokenizer, s["prefill"]["num"],
                                            s["prefill"]["prompt"], seed), s["prefill"]["out"]),
            "decode": Case(workload_tokens(tokenizer, s["decode"]["num"],
                                           s["decode"]["prompt"], seed + 1), s["decode"]["out"])}


def latency_cases(tokenizer, seed: int, quick: bool = False) -> dict[str, Case]:
    """The batch-1 latency table: 'prefill N' (1 output token), 'prompt P gen N'."""
    s = sizes(quick)
    lengths, gen = s["latency_prefill"], s["latency_generate"]
    longest = workload_tokens(tokenizer, 1, max(max(lengths), gen["prompt"]), seed + 2)[0]
    cases = {f"prefill {n}": Case([longest[:n]], 1) for n in lengths}
    cases.update({f"prompt {gen['prompt']} gen {n}": Case([longest[:gen["prompt"]]], n)
                  for n in gen["out"]})
    return cases


def serving_case(tokenizer, seed: int, max_model_len: int, quick: bool = False) -> Case:
    """The serving mix: whole validation prompts, one generate call."""
    s = sizes(quick)["serving"]
    return Case(serving_prompts(tokenizer, s["num"], seed + 3, max_model_len - s["out"]),
                s["out"])
