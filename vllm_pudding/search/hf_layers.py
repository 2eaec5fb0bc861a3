"""An HF causal LM's pieces (embedding, decoder layers, final norm, LM head) called one by
one, so that any layer subset can run from any cached hidden state.

Why: HF has no layer-skip switch, and the pool search, the SLEB/ShortGPT baselines and
the provisional search all try many subsets that share prefixes. What differs between
the architectures they run is kept here, so those three stay architecture-blind:

- rotary embeddings: one per model (Llama, Mistral, Qwen2) or one per layer type
  (Gemma 3: base 10k on sliding-window layers, 1M on full-attention ones);
- attention masks: a sliding-window layer sees only the last `sliding_window`
  positions. With explicit position ids (the search's prefix trees) that is
  ``pos_q - pos_k < window`` on top of the tree mask, as HF's sliding-window causal
  mask is for a plain sequence; Mistral's window applies to every layer;
- the LM head: final-logit soft-capping where the config sets it (Gemma 2 style).
Gemma's scaled embedding and (1 + w) norms live inside its own modules.
"""

from __future__ import annotations

import inspect

import torch

SEARCH_LAYERS = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer",
                 "Gemma3DecoderLayer")
"""HF decoder layers the search and the baselines run."""

FUSED_LAYERS = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer")
"""Layers whose math `scoring._layer_math` (Llama's op order, optional q/k/v biases) is,
when every layer attends fully; others run HF's own layer (eager)."""

FULL, SLIDING = "full_attention", "sliding_attention"


def check_search_layers(model) -> None:
    """Raises ValueError unless the pool search / baselines can run `model`'s layers."""
    name = type(model.model.layers[0]).__name__
    if name not in SEARCH_LAYERS:
        raise ValueError(f"the pool search and baselines run {', '.join(SEARCH_LAYERS)} "
                         f"only, not {name}")


def layer_types(config, num_layers: int) -> list[str]:
    """Attention type of each layer: the config's `layer_types` (Gemma 3, Qwen2), else
    Mistral's model-wide window, else full attention."""
    types = getattr(config, "layer_types", None)
    if types:
        return list(types)[:num_layers]
    window = getattr(config, "sliding_window", None) if config.model_type == "mistral" else None
    return [SLIDING if window else FULL] * num_layers


class HFLayers:
    """Embed / layer / logits of one HF causal LM (loaded with sdpa attention)."""

    def __init__(self, model):
        check_search_layers(model)
        inner, cfg = model.model, model.config
        self.model = model
        self.embed_tokens, self.layers = inner.embed_tokens, inner.layers
        self.norm, self.head, self.rotary_emb = inner.norm, model.lm_head, inner.rotary_emb
        self.num_layers = len(self.layers)
        self.layer_types = layer_types(cfg, self.num_layers)
        self.window = getattr(cfg, "sliding_window", None) if SLIDING in self.layer_types else None
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.fusable = (type(self.layers[0]).__name__ in FUSED_LAYERS
                        and set(self.layer_types) == {FULL})
        self._rotary_per_type = "layer_type" in inspect.signature(
            self.rotary_emb.forward).parameters

    def position_embeddings(self, h: torch.Tensor, pos: torch.Tensor) -> dict[str, tuple]:
        """(cos, sin) per layer type for position ids `pos`."""
        types = sorted(set(self.layer_types))
        if self._rotary_per_type:
            return {t: self.rotary_emb(h, pos, t) for t in types}
        pe = self.rotary_emb(h, position_ids=pos)
        return dict.fromkeys(types, pe)

    def masks(self, mask: torch.Tensor | None, pos: torch.Tensor) -> dict:
        """Attention mask per layer type. `mask`: bool (B, 1, T, T), True = attend, or
        None for plain causal attention (sdpa); sliding layers also drop every key
        `window` or more positions behind the query."""
        out = dict.fromkeys(set(self.layer_types), mask)
        if SLIDING in out and int(pos.max()) >= self.window:
            dist = pos[:, None, :, None] - pos[:, None, None, :]
            base = dist >= 0 if mask is None else mask
            out[SLIDING] = base & (dist < self.window)
        return out

    def layer(self, i: int, h: torch.Tensor, masks: dict, pos: torch.Tensor,
              pes: dict) -> torch.Tensor:
        t = self.layer_types[i]
        out = self.layers[i](h, attention_mask=masks[t], position_ids=pos,
                             position_embeddings=pes[t])
        return out[0] if isinstance(out, tuple) else out

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """fp32 logits of final hidden states (norm, head, soft-capping as HF does)."""
        logits = self.head(self.norm(h))
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.float()
