"""The default pudding model dir: SmolLM2-135M-Instruct with the committed pool.

Built once into `<cache>/pudding/<name>/` (symlinks to the converted model, so
it costs no disk) and reused. The pool comes from a committed JSON file: no
search runs at demo, test or benchmark time. The file is the calibrated pool of
`python -m vllm_pudding.search` (10 sets, k = 7); `smollm2_135m_provisional.json`
is the earlier stand-in that the first benchmarks and evaluation used. Sets whose free
generation broke (`python -m vllm_pudding.eval.sanity`) stay in the pool, pinnable, but
outside its `routable_sets`. The router
(`vllm_pudding/routers/<pool>/<kind>/`: head weights and spec, trained by
`python -m vllm_pudding.router.train`) is installed too, so requests that name no
set are routed.

Command (builds if needed, prints the path)::

    python -m vllm_pudding.default_pudding
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vllm_pudding.artifact import build_pudding_dir, load_pudding_dir
from vllm_pudding.config import PuddingConfig, RouterRef
from vllm_pudding.default_model import cache_dir, ensure_default_model

POOL_FILE = "smollm2_135m_k7.json"
ROUTER_KIND = "hidden"
"""The router the default dir installs: the hidden router, decided inside the engine at no
extra model compute (router/in_engine.py); same validation accuracy as the text router
(44.5 both). The text router stays selectable: `install_router`."""


def packaged_router(pool_file: str, kind: str = ROUTER_KIND) -> Path | None:
    """The committed router folder trained for a packaged pool, if there is one."""
    folder = resources.files("vllm_pudding.routers").joinpath(Path(pool_file).stem, kind)
    return Path(str(folder)) if folder.joinpath("router.json").is_file() else None


def _is_current(out: Path, pool: PuddingConfig, router: Path | None) -> bool:
    try:
        if load_pudding_dir(out) != pool:
            return False
    except ValueError:
        return False  # a stale or broken dir is rebuilt
    if router is None:
        return True
    installed = out / pool.router.path
    return all((installed / f).is_file() and (installed / f).read_bytes() == (router / f).read_bytes()
               for f in ("router.json", "head.safetensors"))


def ensure_packaged_dir(base: Path, pool_file: str, kind: str = ROUTER_KIND) -> Path:
    """`<cache>/pudding/<base name>-<pool>`: `base` with a packaged pool and its committed
    router (when one was trained), built when absent or stale."""
    from vllm_pudding.names import packaged_pool
    from vllm_pudding.router.install import install_router

    pool, meta = packaged_pool(pool_file)
    router = packaged_router(pool_file, kind)
    expected = pool.model_copy(update={"router": RouterRef(path=f"router-{kind}",
                                                           kind=kind)}) if router else pool
    out = cache_dir() / "pudding" / f"{Path(base).name}-{Path(pool_file).stem}"
    if out.exists() and _is_current(out, expected, router):
        return out
    out = build_pudding_dir(base, pool, out, meta=meta)
    if router is not None:
        install_router(out, router)
    return out


def ensure_default_pudding_dir() -> Path:
    """Path of the default pudding dir, building it when absent or stale."""
    return ensure_packaged_dir(ensure_default_model(), POOL_FILE)


if __name__ == "__main__":
    print(ensure_default_pudding_dir())
