"""HF transformers in place of the vLLM engine: the same examples, prompts and scoring.

Why: a converted model's accuracy through vLLM is only trustworthy next to the same
model's accuracy through an independent implementation. `HFEngine.generate` answers the
two kinds of requests `eval.scoring.score_examples` sends (prompt log-probs of the
continuation; the log-probs of given token ids at the next position) from one HF
forward pass each, so the request building, truncation and metrics stay the project's
own. Dense models only: no `pudding_set`.

    python -m vllm_pudding.eval --model <plain model dir> --hf --dtype float32 ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class _Logprob:
    logprob: float


@dataclass(frozen=True)
class _Completion:
    logprobs: list[dict[int, _Logprob]]


@dataclass(frozen=True)
class _Output:
    prompt_logprobs: list[dict[int, _Logprob] | None]
    outputs: list[_Completion]


class HFEngine:
    """The part of `vllm.LLM` the scorer uses, run by an HF causal LM on this process's
    cores (`max_model_len` must be given to `score_examples`)."""

    def __init__(self, model: Path, dtype: str = "float32"):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(len(os.sched_getaffinity(0)))  # taskset: one thread per core
        self.model = AutoModelForCausalLM.from_pretrained(
            str(model), dtype=getattr(torch, dtype)).eval()

    def generate(self, prompts, params, use_tqdm: bool = False) -> list[_Output]:
        import torch

        outs = []
        with torch.inference_mode():
            for prompt, p in zip(prompts, params):
                if p.extra_args:
                    raise ValueError("the HF reference runs the dense model only (no pudding_set)")
                ids = prompt["prompt_token_ids"]
                logits = self.model(torch.tensor([ids])).logits[0].float()
                logp = torch.log_softmax(logits, dim=-1)
                plp = [None] + [{t: _Logprob(float(logp[i - 1, t]))} for i, t in
                                enumerate(ids) if i] if p.prompt_logprobs is not None else None
                wanted = p.logprob_token_ids or []
                step = {t: _Logprob(float(logp[-1, t])) for t in wanted}
                outs.append(_Output(prompt_logprobs=plp, outputs=[_Completion([step])]))
        return outs
