"""The pudding model dir: an HF-style model dir that vLLM serves as a PuDDing model.

Layout (base files are symlinked, never copied, so a pudding dir costs no disk):
  config.json        the base config, architectures -> Pudding<Arch>, plus the `pudding` section
  pudding_meta.json  how the pool was made (provenance per set, provisional flag, base model)
  *.safetensors, tokenizer files, generation_config.json -> base model dir
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vllm_pudding.config import SECTION, PuddingConfig

META_FILE = "pudding_meta.json"
PUDDING_ARCH = {
    "LlamaForCausalLM": "PuddingLlamaForCausalLM",
    "MistralForCausalLM": "PuddingMistralForCausalLM",
    "Qwen2ForCausalLM": "PuddingQwen2ForCausalLM",
    "Gemma3ForCausalLM": "PuddingGemma3ForCausalLM",
}
"""Base architecture -> its PuDDing variant (vllm_pudding.ARCHITECTURES); `pudding static`
turns a variant back by dropping the prefix."""


def build_pudding_dir(base_dir: Path, pool: PuddingConfig, out_dir: Path,
                      meta: dict[str, Any] | None = None) -> Path:
    """Writes `out_dir` atomically from `base_dir` (an HF model dir of an architecture in
    PUDDING_ARCH) and a validated pool."""
    base_dir, out_dir = Path(base_dir).resolve(), Path(out_dir)
    config = json.loads((base_dir / "config.json").read_text())
    config["architectures"] = [_pudding_arch(config)]
    pool.check(config["num_hidden_layers"])
    config[SECTION] = pool.to_section()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    for item in base_dir.iterdir():
        if item.name not in ("config.json", META_FILE):
            os.symlink(item, tmp / item.name)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    full_meta = {"base_model": str(base_dir), "created": _dt.datetime.now().isoformat(),
                 "provisional": pool.provisional, **(meta or {})}
    (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def load_pudding_dir(path: Path) -> PuddingConfig:
    """Reads and validates a pudding dir's pool; errors name the file and field."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{config_file}: missing (not a model dir)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}: not valid JSON ({e})") from None
    if SECTION not in config:
        raise ValueError(f"{config_file}: no '{SECTION}' section (not a pudding model dir)")
    try:
        return PuddingConfig.parse(config[SECTION], config["num_hidden_layers"])
    except ValueError as e:
        raise ValueError(f"{config_file}: {e}") from None


def base_model(pudding_dir: Path) -> Path:
    """The base model dir a pudding dir was built from (its `pudding_meta.json`)."""
    meta = Path(pudding_dir) / META_FILE
    if not meta.is_file():
        raise ValueError(f"{meta}: missing (not a pudding model dir built by vllm-pudding)")
    return Path(json.loads(meta.read_text())["base_model"])


def _pudding_arch(config: dict[str, Any]) -> str:
    archs = config.get("architectures") or []
    if len(archs) != 1 or archs[0] not in PUDDING_ARCH:
        raise ValueError(f"architectures {archs}: vllm-pudding supports {sorted(PUDDING_ARCH)}")
    return PUDDING_ARCH[archs[0]]
