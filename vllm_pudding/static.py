"""Static depth pruning: a plain checkpoint with some layers physically removed.

The reference that exactness tests and benchmarks compare against: stock vLLM
serving this checkpoint must match a PuDDing request routed to the same set.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from safetensors.torch import load_file, save_file

_LAYER = re.compile(r"^(model\.layers\.)(\d+)(\..*)$")


def write_static_checkpoint(base_dir: Path, omitted: list[int], out_dir: Path) -> Path:
    """Copies `base_dir` without the `omitted` layers, renumbering the rest."""
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    config = json.loads((base_dir / "config.json").read_text())
    num_layers = config["num_hidden_layers"]
    kept = [l for l in range(num_layers) if l not in set(omitted)]
    new_index = {old: new for new, old in enumerate(kept)}
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for shard in sorted(base_dir.glob("*.safetensors")):
        for name, tensor in load_file(shard).items():
            renamed = _rename(name, new_index)
            if renamed is not None:
                tensors[renamed] = tensor
    save_file(tensors, out_dir / "model.safetensors")
    config["num_hidden_layers"] = len(kept)
    _keep_layer_lists(config, kept)
    config.pop("pudding", None)
    config["architectures"] = [a.removeprefix("Pudding") for a in config["architectures"]]
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    for item in base_dir.iterdir():
        if item.suffix != ".safetensors" and item.name not in ("config.json", "pudding_meta.json") \
                and item.name != "model.safetensors.index.json":
            target = out_dir / item.name
            if not target.exists():
                os.symlink(item.resolve(), target)
    return out_dir


def cached_static_checkpoint(base_dir: Path, omitted: list[int]) -> Path:
    """The static checkpoint of `base_dir` without `omitted`, written once under the
    cache dir and reused.

    Why cached: benchmarks need one per run, and a fresh temporary copy per run
    (hundreds of MB to GB, never removed) once filled the disk that CI shares.
    The key covers the base's path, its weight files' sizes and times, and the set,
    so a reconverted base gets a new checkpoint."""
    from vllm_pudding.offline_models import cache_dir
    from vllm_pudding.write_once import write_dir_once

    base_dir = Path(base_dir).resolve()
    weights = [(f.name, f.stat()) for f in sorted(base_dir.glob("*.safetensors"))]
    stamp = [str(base_dir), sorted(omitted), [(n, s.st_size, s.st_mtime_ns) for n, s in weights]]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:12]
    out = cache_dir() / "static" / f"{base_dir.name}-{key}"
    return write_dir_once(out, "config.json",
                          lambda tmp: write_static_checkpoint(base_dir, omitted, tmp))


def _keep_layer_lists(config: dict, kept: list[int]) -> None:
    """Per-layer config lists (`layer_types`: Gemma 3's sliding/full interleave, Qwen2's
    sliding layers) follow the kept layers, so each keeps its own attention type."""
    for cfg in (config, config.get("text_config") or {}):
        if isinstance(cfg.get("layer_types"), list):
            cfg["layer_types"] = [cfg["layer_types"][l] for l in kept]
        if "max_window_layers" in cfg:  # Qwen2: layers from this index on use sliding window
            cfg["max_window_layers"] = sum(1 for l in kept if l < cfg["max_window_layers"])


def _rename(name: str, new_index: dict[int, int]) -> str | None:
    match = _LAYER.match(name)
    if match is None:
        return name
    old = int(match.group(2))
    if old not in new_index:
        return None
    return f"{match.group(1)}{new_index[old]}{match.group(3)}"
