"""Token-level scoring of multiple-choice examples under a model with layers removed.

Per example and choice the score is l_c = mean per-token log-prob of choice c's
continuation given its context (BENCHMARKS.md, "Calibration losses"); the two
calibration losses are built from these (`losses`).

The fast path computes exactly that quantity, with these (exact) savings:

- Tokenization follows lm-evaluation-harness (`encode_pair`): context and continuation
  are encoded from ``context + continuation``; the scored token ids are ``ctx + cont``.
- Shared context once for all choices: the token sequences of one example's choices
  are merged into a prefix tree (trie). Every trie node is one token at position
  ``depth``; it attends to itself and its ancestors only, so its hidden state is the
  one a plain forward of any choice sharing that prefix computes. The last token of
  each choice is never an input to a scored prediction, so it is left out (BoolQ's
  one-token answers then cost nothing beyond the shared context).
- Batching: the trees of many examples are packed into rows of one length with a
  block-diagonal tree mask (bool, SDPA) and explicit position ids (RoPE); rows are
  processed in chunks of about `chunk_tokens` tokens.
- Only scored positions go through the final norm and the LM head.
- Layers are called one by one (`LayerModel`), so a caller can start from any cached
  hidden state (greedy search: the prefix a removal does not change) and run any
  subset of layers. Two implementations of the same math: HF's own decoder layers
  (`compiled=False`, the reference), or `_layer_math` (q/k/v and gate/up weights
  concatenated, same ops as HF's LlamaDecoderLayer) under `torch.compile`, which fuses
  the element-wise work (~1.5x faster on CPU in bf16, and closer to fp32 because fused
  intermediates stay fp32); the final norm + LM head + log-softmax likewise
  (`_head_math`, ~2x). Without a working compiler both fall back to eager.

`tests/test_pool_search.py` checks the result against a plain HF forward of
``context + continuation`` per choice with the layers physically removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from vllm_pudding.data.mc import MCExample
from vllm_pudding.search.hf_layers import FULL, HFLayers


# ---------------------------------------------------------------------------- tokens

def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's `_encode_pair`: trailing spaces of the context move to the
    continuation; the continuation ids are the tail of ``encode(context + continuation)``
    after ``len(encode(context))`` tokens. No special tokens are added."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok(context + continuation, add_special_tokens=False).input_ids
    ctx = tok(context, add_special_tokens=False).input_ids
    return list(ctx), list(whole[len(ctx):])


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example: per choice (context ids, continuation ids)."""

    pairs: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]
    gold: int

    @property
    def num_choices(self) -> int:
        return len(self.pairs)


def encode_examples(tok, examples: Sequence[MCExample]) -> list[EncodedExample]:
    out = []
    for ex in examples:
        pairs = []
        for c in range(ex.num_choices):
            ctx, cont = encode_pair(tok, *ex.pair(c))
            if not ctx or not cont:
                raise ValueError(f"{ex.task}/{ex.doc_id} choice {c}: empty context or "
                                 f"continuation after tokenization")
            pairs.append((tuple(ctx), tuple(cont)))
        if not 0 <= ex.gold < len(pairs):
            raise ValueError(f"{ex.task}/{ex.doc_id}: gold {ex.gold} out of range")
        out.append(EncodedExample(tuple(pairs), ex.gold))
    return out


# ---------------------------------------------------------------------------- packing

@dataclass
class _Tree:
    """One example's prefix tree: nodes in insertion order (parents first)."""

    tokens: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    # scored predictions: (node whose output predicts, target id, choice)
    scores: list[tuple[int, int, int]] = field(default_factory=list)


def _build_tree(ex: EncodedExample) -> _Tree:
    tree = _Tree()
    children: dict[tuple[int, int], int] = {}  # (parent node, token) -> node
    for c, (ctx, cont) in enumerate(ex.pairs):
        seq = ctx + cont
        node, path = -1, []
        for tok_id in seq[:-1]:  # the last token is never an input of a scored prediction
            key = (node, tok_id)
            if key not in children:
                children[key] = len(tree.tokens)
                tree.tokens.append(tok_id)
                tree.parent.append(node)
                tree.depth.append(len(path))
            node = children[key]
            path.append(node)
        for t in range(len(ctx), len(seq)):
            tree.scores.append((path[t - 1], seq[t], c))
    return tree


@dataclass
class Packed:
    """Examples packed as prefix trees into rows of equal length (see module doc)."""

    input_ids: torch.Tensor       # (R, T)
    position_ids: torch.Tensor    # (R, T)
    mask: torch.Tensor            # (R, 1, T, T) bool, True = attend
    score_index: torch.Tensor     # (S,) flat index r * T + t of the predicting position
    score_target: torch.Tensor    # (S,) target token id
    score_segment: torch.Tensor   # (S,) example * max_choices + choice
    segment_tokens: torch.Tensor  # (E * max_choices,) continuation lengths (0 = no choice)
    num_choices: np.ndarray       # (E,)
    gold: np.ndarray              # (E,)
    chunks: list[tuple[int, int]]          # row ranges processed together
    chunk_scores: list[tuple[int, int]]    # score ranges of each chunk (scores sorted)
    tokens: int                   # real tokens (tree nodes)

    @property
    def num_examples(self) -> int:
        return len(self.gold)

    @property
    def max_choices(self) -> int:
        return int(self.num_choices.max())

    @property
    def padded_tokens(self) -> int:
        return self.input_ids.numel()


def pack(encoded: Sequence[EncodedExample], row_tokens: int = 512,
         chunk_tokens: int = 4096, pad_id: int = 0) -> Packed:
    """First-fit-decreasing packing of the examples' trees into rows of
    T = max(row_tokens, largest tree) tokens; chunks of consecutive rows hold about
    `chunk_tokens` tokens (at least one row)."""
    if not encoded:
        raise ValueError("no examples")
    trees = [_build_tree(e) for e in encoded]
    sizes = [len(t.tokens) for t in trees]
    T = max(row_tokens, max(sizes))
    rows: list[list[int]] = []  # example ids per row
    fill: list[int] = []
    for e in sorted(range(len(trees)), key=lambda i: (-sizes[i], i)):
        for r, used in enumerate(fill):
            if used + sizes[e] <= T:
                rows[r].append(e)
                fill[r] += sizes[e]
                break
        else:
            rows.append([e])
            fill.append(sizes[e])
    R, C = len(rows), max(e.num_choices for e in encoded)
    ids = torch.full((R, T), pad_id, dtype=torch.long)
    pos = torch.zeros((R, T), dtype=torch.long)
    mask = torch.zeros((R, 1, T, T), dtype=torch.bool)
    s_index, s_target, s_seg = [], [], []
    for r, members in enumerate(rows):
        off = 0
        for e in members:
            tree, n = trees[e], sizes[e]
            ids[r, off:off + n] = torch.tensor(tree.tokens, dtype=torch.long)
            pos[r, off:off + n] = torch.tensor(tree.depth, dtype=torch.long)
            anc = np.zeros((n, n), dtype=bool)
            for i, p in enumerate(tree.parent):
                if p >= 0:
                    anc[i] = anc[p]
                anc[i, i] = True
            mask[r, 0, off:off + n, off:off + n] = torch.from_numpy(anc)
            for node, target, c in tree.scores:
                s_index.append(r * T + off + node)
                s_target.append(target)
                s_seg.append(e * C + c)
            off += n
        for t in range(off, T):  # padding attends to itself only (no empty softmax rows)
            mask[r, 0, t, t] = True
    order = np.argsort(np.asarray(s_index), kind="stable")
    s_index = torch.tensor(np.asarray(s_index)[order], dtype=torch.long)
    s_target = torch.tensor(np.asarray(s_target)[order], dtype=torch.long)
    s_seg = torch.tensor(np.asarray(s_seg)[order], dtype=torch.long)
    seg_tokens = torch.bincount(s_seg, minlength=len(encoded) * C).to(torch.float64)
    rows_per_chunk = max(1, chunk_tokens // T)
    chunks = [(a, min(a + rows_per_chunk, R)) for a in range(0, R, rows_per_chunk)]
    bounds = torch.searchsorted(s_index, torch.tensor([a * T for a, _ in chunks] + [R * T]))
    chunk_scores = [(int(bounds[i]), int(bounds[i + 1])) for i in range(len(chunks))]
    return Packed(ids, pos, mask, s_index, s_target, s_seg, seg_tokens,
                  np.array([e.num_choices for e in encoded]),
                  np.array([e.gold for e in encoded]), chunks, chunk_scores, sum(sizes))


# ---------------------------------------------------------------------------- model

def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm: fp32 statistics, result cast back, then the weight."""
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _layer_math(h, mask, cos, sin, wqkv, bqkv, wo, wgu, wd, n1, n2,
                eps: float, nq: int, nkv: int, hd: int, scale: float):
    """One LlamaDecoderLayer (HF's op order) with a bool attention mask; `bqkv`: Qwen2's
    q/k/v biases (None for Llama), its only difference from Llama here."""
    F = torch.nn.functional
    B, T, _ = h.shape
    q, k, v = F.linear(_rms(h, n1, eps), wqkv, bqkv).split([nq * hd, nkv * hd, nkv * hd], -1)
    q = q.view(B, T, nq, hd).transpose(1, 2)
    k = k.view(B, T, nkv, hd).transpose(1, 2)
    v = v.view(B, T, nkv, hd).transpose(1, 2)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)

    def rope(t):
        t1, t2 = t.chunk(2, -1)
        return t * c + torch.cat((-t2, t1), -1) * s

    o = F.scaled_dot_product_attention(rope(q), rope(k), v, attn_mask=mask, scale=scale,
                                       enable_gqa=nkv != nq)
    h = h + F.linear(o.transpose(1, 2).reshape(B, T, nq * hd), wo)
    g, u = F.linear(_rms(h, n2, eps), wgu).chunk(2, -1)
    return h + F.linear(F.silu(g) * u, wd)


def _head_math(x, norm_w, head_w, target, eps: float):
    """Log-prob of `target` under final norm + LM head; log-softmax in fp32."""
    logits = torch.nn.functional.linear(_rms(x, norm_w, eps), head_w).float()
    return logits.gather(1, target[:, None])[:, 0] - torch.logsumexp(logits, -1)


_COMPILED: dict = {}


def _compiled(fn):
    """torch.compile(fn) once per process (dynamic shapes: one graph for all chunks)."""
    if fn.__name__ not in _COMPILED:
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        _COMPILED[fn.__name__] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn.__name__]


class LayerModel(HFLayers):
    """`HFLayers` plus the fused weights `_layer_math` takes (Llama-family layers).
    Load the model with ``attn_implementation="sdpa"``."""

    def __init__(self, model):
        super().__init__(model)
        self.dtype = self.embed_tokens.weight.dtype
        attn, cfg = self.layers[0].self_attn, model.config
        self.consts = (float(self.norm.variance_epsilon), int(cfg.num_attention_heads),
                       int(cfg.num_key_value_heads), int(attn.head_dim),
                       float(attn.scaling)) if self.fusable else ()
        self._fused: dict[int, tuple] = {}

    def fused(self, i: int) -> tuple:
        """Layer i's weights for `_layer_math` (q/k/v and gate/up concatenated)."""
        if i not in self._fused:
            l = self.layers[i]
            a, m = l.self_attn, l.mlp
            with torch.no_grad():
                self._fused[i] = (
                    torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).contiguous(),
                    None if a.q_proj.bias is None else
                    torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]).contiguous(),
                    a.o_proj.weight,
                    torch.cat([m.gate_proj.weight, m.up_proj.weight]).contiguous(),
                    m.down_proj.weight, l.input_layernorm.weight,
                    l.post_attention_layernorm.weight)
        return self._fused[i]


def load_layer_model(path, dtype: torch.dtype = torch.bfloat16) -> tuple[LayerModel, object]:
    """(LayerModel, tokenizer) for an HF model dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    return LayerModel(model.eval()), AutoTokenizer.from_pretrained(path)


class TaskScorer:
    """Scores one packed example set under any layer subset.

    Hidden states are lists with one tensor per chunk, so a caller can keep the state in
    front of any layer and resume from it (`run`); `logprobs` turns final states into
    the per-example, per-choice mean log-probs."""

    def __init__(self, lm: LayerModel, packed: Packed, head_chunk: int = 256,
                 compiled: bool = False):
        self.lm, self.packed, self.head_chunk = lm, packed, head_chunk
        self.compiled = compiled and lm.fusable  # others: HF's own layers
        self.masks, self.pos, self.pe, self.ids = [], [], [], []
        dummy = torch.zeros((), dtype=lm.dtype)
        for a, b in packed.chunks:
            pos = packed.position_ids[a:b]
            self.ids.append(packed.input_ids[a:b])
            self.pos.append(pos)
            self.pe.append({t: (c.to(lm.dtype), s.to(lm.dtype))
                            for t, (c, s) in lm.position_embeddings(dummy, pos).items()})
            self.masks.append(lm.masks(packed.mask[a:b], pos))
        self.layer_calls = 0   # token-layer passes, for speed reports
        self.head_tokens = 0

    @torch.inference_mode()
    def embed(self) -> list[torch.Tensor]:
        return [self.lm.embed_tokens(ids) for ids in self.ids]

    @torch.inference_mode()
    def layer(self, i: int, hs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self._layer(i, h, ci) for ci, h in enumerate(hs)]

    def _layer(self, i: int, h: torch.Tensor, ci: int) -> torch.Tensor:
        self.layer_calls += h.shape[0] * h.shape[1]
        if not self.compiled:
            return self.lm.layer(i, h, self.masks[ci], self.pos[ci], self.pe[ci])
        args = (h, self.masks[ci][FULL], *self.pe[ci][FULL], *self.lm.fused(i),
                *self.lm.consts)
        return self._call(_layer_math, args)

    def _call(self, fn, args):
        """fn compiled; on a compiler failure warn once and run eager from then on."""
        if _COMPILED.get("broken"):
            return fn(*args)
        try:
            return _compiled(fn)(*args)
        except Exception as err:  # no C++ compiler, unsupported op, ...
            import warnings

            warnings.warn(f"torch.compile failed ({type(err).__name__}: {err}); running eager")
            _COMPILED["broken"] = True
            return fn(*args)

    @torch.inference_mode()
    def run(self, hs: list[torch.Tensor], layer_ids: Sequence[int]) -> np.ndarray:
        """Run `layer_ids` from the states `hs` and score: (E, max_choices) mean
        log-probs, NaN where an example has fewer choices. Chunk by chunk, so only one
        chunk's activations are live; the scored positions of all chunks then go
        through the head together."""
        p = self.packed
        T = p.input_ids.shape[1]
        picked = []
        for ci, h in enumerate(hs):
            for i in layer_ids:
                h = self._layer(i, h, ci)
            a, b = p.chunk_scores[ci]
            picked.append(h.reshape(-1, h.shape[-1])[p.score_index[a:b] - p.chunks[ci][0] * T])
        return self._finish(self._head(torch.cat(picked)))

    @torch.inference_mode()
    def logprobs(self, hs: list[torch.Tensor]) -> np.ndarray:
        return self.run(hs, ())

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token log-probs of the targets, summed per (example, choice) segment."""
        p = self.packed
        sums = torch.zeros(p.segment_tokens.numel(), dtype=torch.float64)
        for s in range(0, len(x), self.head_chunk):
            e = min(s + self.head_chunk, len(x))
            tgt = p.score_target[s:e]
            if self.compiled:
                lp = self._call(_head_math, (x[s:e], self.lm.norm.weight, self.lm.head.weight,
                                             tgt, self.lm.consts[0]))
            else:
                logits = self.lm.logits(x[s:e])
                lp = logits.gather(1, tgt[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
            sums.index_add_(0, p.score_segment[s:e], lp.double())
            self.head_tokens += e - s
        return sums

    def _finish(self, sums: torch.Tensor) -> np.ndarray:
        p = self.packed
        cnt = p.segment_tokens
        mean = torch.where(cnt > 0, sums / cnt.clamp(min=1), torch.full_like(sums, float("nan")))
        return mean.view(p.num_examples, p.max_choices).numpy()

    def prefix_states(self, kept: Sequence[int], upto: int,
                      base: tuple[Sequence[int], list] | None = None) -> list:
        """states[j] = hidden state entering kept[j], for j = 0..upto (inclusive);
        states[0] is the embedding. With `base` = (base_kept, base_states), the states of
        the longest common prefix of kept and base_kept are reused, not recomputed."""
        states: list = []
        if base is not None:
            bk, bs = base
            p = 0
            while p < min(len(bk), len(kept)) and bk[p] == kept[p]:
                p += 1
            states = list(bs[:min(p, upto) + 1])  # bs[j] depends on kept[:j] only
        if not states:
            states = [self.embed()]
        while len(states) <= upto:
            j = len(states) - 1
            states.append(self.layer(kept[j], states[j]))
        return states


def score_examples(lm: LayerModel, tok, examples: Sequence[MCExample],
                   removed: Sequence[int] = (), compiled: bool = False,
                   **pack_kw) -> np.ndarray:
    """(E, max_choices) mean continuation log-probs with the layers in `removed` skipped."""
    scorer = TaskScorer(lm, pack(encode_examples(tok, examples), **pack_kw),
                        compiled=compiled)
    kept = [i for i in range(lm.num_layers) if i not in set(removed)]
    return scorer.run(scorer.embed(), kept)


# ---------------------------------------------------------------------------- losses

LOSSES = ("likelihood", "margin")


def losses(lp: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Calibration losses of BENCHMARKS.md from (E, C) mean log-probs (NaN = no choice):
    likelihood = -sum l_correct; margin = -sum((C-1) l_correct - sum_wrong l_wrong);
    also acc (argmax of l, ties to the lower index) and mean l_correct."""
    lp = np.asarray(lp, dtype=np.float64)
    present = ~np.isnan(lp)
    n_ch = present.sum(1)
    correct = lp[np.arange(len(gold)), gold]
    wrong = np.where(present, lp, 0.0).sum(1) - correct
    pred = np.where(present, lp, -np.inf).argmax(1)
    return {"likelihood": float(-correct.sum()),
            "margin": float(-((n_ch - 1) * correct - wrong).sum()),
            "acc": float((pred == gold).mean()),
            "mean_l_correct": float(correct.mean())}
