"""Writing a trained router and installing it into a pudding dir.

A router folder holds `router.json` and `head.safetensors` (small: committed for the
default model); a text router's encoder is symlinked in (`encoder/`) from the
package that ships it, as the base weights are, so a pudding dir costs no disk.
Installing also records the router in config.json's `pudding.router`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from vllm_pudding.config import SECTION, RouterRef
from vllm_pudding.router.head import RouterHead
from vllm_pudding.router.spec import HEAD_FILE, SPEC_FILE, RouterSpec, load_spec, write_spec

ENCODER_LINK = "encoder"


def save_router(router_dir: Path, spec: RouterSpec, head: RouterHead) -> Path:
    from safetensors.torch import save_file

    router_dir = Path(router_dir)
    router_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()},
              str(router_dir / HEAD_FILE))
    write_spec(router_dir, spec)
    return router_dir


def install_router(pudding_dir: Path, source: Path, *, folder: str | None = None,
                   encoder_dir: Path | None = None) -> Path:
    """Copies a router folder into `pudding_dir`, links its encoder, names it in config.json.

    Validates the router against the dir's pool first (errors name the file).
    """
    from vllm_pudding.artifact import load_pudding_dir

    pudding_dir, source = Path(pudding_dir), Path(source)
    pool = load_pudding_dir(pudding_dir)
    spec = RouterSpec(**json.loads((source / SPEC_FILE).read_text()))
    dest = pudding_dir / (folder or f"router-{spec.kind}")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir()
    for name in (SPEC_FILE, HEAD_FILE):
        shutil.copyfile(source / name, dest / name)
    if spec.kind == "text":
        from vllm_pudding.router.text import default_encoder_dir

        os.symlink((encoder_dir or default_encoder_dir()).resolve(), dest / ENCODER_LINK)
    load_spec(dest, pool.omission_sets)
    config_file = pudding_dir / "config.json"
    config = json.loads(config_file.read_text())
    config[SECTION]["router"] = RouterRef(path=dest.name, kind=spec.kind).model_dump()
    config_file.write_text(json.dumps(config, indent=2))
    return dest
