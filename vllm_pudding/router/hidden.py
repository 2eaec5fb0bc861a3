"""In-model features: the base model's own hidden states after its always-kept prefix.

Every candidate keeps layers 0..p-1 (p = the lowest layer any set omits), so those
layers run for every request whatever the router decides: reading the residual
stream after them costs only the head. No second model, no second tokenizer.
Here the prefix runs in HF transformers (training features, offline routing); the
features are the residual stream after layer p-1 (before the final norm),
pooled as the spec says. Prompts are tokenized as vLLM tokenizes a text prompt
(special tokens added), so training features match what the in-engine router
(router/in_engine.py) pools from the engine's own states.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def common_prefix(omission_sets: Sequence[Sequence[int]]) -> int:
    """p: the number of leading layers that no candidate omits."""
    return min(min(s) for s in omission_sets if s) if any(omission_sets) else 0


def pool_states(states: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """states [b, t, d], mask [b, t] -> [b, d] (mean) or [b, 2d] (mean, last token)."""
    m = mask.unsqueeze(-1).to(states.dtype)
    mean = (states * m).sum(1) / m.sum(1).clamp_min(1.0)
    if pooling == "mean":
        return mean
    last = states[torch.arange(states.shape[0]), mask.sum(1).long() - 1]
    return torch.cat([mean, last], dim=-1)


class PrefixEncoder:
    """Prompt text -> pooled residual stream after the first `prefix_layers` layers."""

    def __init__(self, model_dir: Path, prefix_layers: int, max_tokens: int = 128,
                 pooling: str = "mean_last"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        body = model.model
        body.layers = body.layers[:prefix_layers]  # the rest is never needed here
        body.norm = torch.nn.Identity()
        self.body = body.eval()
        self.max_tokens, self.pooling = max_tokens, pooling
        size = model.config.hidden_size
        self.dim = size if pooling == "mean" else 2 * size

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        out = []
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                                 max_length=self.max_tokens, return_tensors="pt")
            states = self.body(**enc).last_hidden_state
            out.append(pool_states(states.float(), enc["attention_mask"], self.pooling))
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    @torch.no_grad()
    def encode_ids(self, prompts: Sequence[Sequence[int]], batch_size: int = 32) -> torch.Tensor:
        """Token-id prompts as the in-engine router reads them: the first `max_tokens` ids,
        not re-tokenized (a rendered chat prompt keeps its special tokens). Serving's routing
        workers use it (vllm_pudding/serve_ray/routing.py); training features stay `__call__`'s."""
        out = []
        for i in range(0, len(prompts), batch_size):
            rows = [list(p)[:self.max_tokens] for p in prompts[i:i + batch_size]]
            if any(not r for r in rows):
                raise ValueError("the router needs a non-empty prompt")
            ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for j, r in enumerate(rows):
                ids[j, :len(r)] = torch.tensor(r)
                mask[j, :len(r)] = 1
            states = self.body(input_ids=ids, attention_mask=mask).last_hidden_state
            out.append(pool_states(states.float(), mask, self.pooling))
        return torch.cat(out) if out else torch.zeros(0, self.dim)
