"""Engine settings a PuDDing model needs, applied through vLLM's per-architecture config hook.

`MODELS_CONFIG_MAP[arch].verify_and_update_config` runs while vLLM builds its
config, in the front-end process, before any engine or worker starts: the place
to reject a malformed pool and every configuration PuDDing cannot serve
(`supported.py`) early, and to turn off what the per-row layer loop
cannot support (vLLM's whole-model torch.compile and CUDA graphs replay one fixed
structure; `layer_compile` compiles each layer's body instead, when asked).
"""

from __future__ import annotations

from vllm.logger import init_logger

from vllm_pudding import layer_compile, spread, supported
from vllm_pudding.config import from_hf_config

logger = init_logger(__name__)


class PuddingEngineConfig:
    """vLLM VerifyAndUpdateConfig for PuDDing architectures."""

    @staticmethod
    def verify_and_update_model_config(model_config) -> None:
        pool = from_hf_config(model_config.hf_config)  # raises ValueError naming the field
        if pool is not None and pool.router is not None:
            from pathlib import Path

            from vllm_pudding.router.spec import load_spec

            # Fail at start, naming the file, rather than on the first routed request.
            load_spec(Path(model_config.model) / pool.router.path, pool.omission_sets)

    @staticmethod
    def verify_and_update_config(vllm_config) -> None:
        model_config = vllm_config.model_config
        pool = from_hf_config(model_config.hf_config)
        supported.check(vllm_config)  # raises ValueError naming every unsupported setting
        supported.choose_default_backend(vllm_config)
        layer_compile.resolve(vllm_config)
        spread.configured_mode(vllm_config.additional_config)  # a bad value fails at start
        if not model_config.enforce_eager:
            logger.info("vllm-pudding: enforce_eager=True for vLLM (the per-request layer "
                        "loop cannot be captured by its whole-model compile or CUDA graphs; "
                        "pudding_compile_layers compiles each layer's body instead)")
            model_config.enforce_eager = True
        logger.info("vllm-pudding: pool of %d sets, k=%d, default set %d%s",
                    len(pool.omission_sets), pool.k, pool.default_set,
                    " (provisional pool)" if pool.provisional else "")
        if pool.router is None:
            _say_no_router(model_config.model, pool.default_set)


def _say_no_router(model_dir: str, default_set: int) -> None:
    """Once per process: a dir without a router serves requests that name no set at one
    depth; the user should know, and how to train one (`pudding build`, vllm_pudding/build.py).
    Silent for the router-less dir that `pudding build` scores its router labels on."""
    import json
    from pathlib import Path

    from vllm_pudding.artifact import META_FILE

    try:
        meta = json.loads((Path(model_dir) / META_FILE).read_text())
    except (OSError, ValueError):
        meta = {}
    if meta.get("router_labels_engine"):
        return
    logger.warning_once(
        "vllm-pudding: this pudding dir has no router: requests that name no pudding_set run "
        "default_set %d. Train one (router labels through the engine, then the head) with: "
        "pudding build %s OUT_DIR --pool %s", default_set, meta.get("base_model", "BASE_DIR"),
        model_dir)


def register(architectures) -> None:
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    for arch in architectures:
        MODELS_CONFIG_MAP.setdefault(arch, PuddingEngineConfig)
