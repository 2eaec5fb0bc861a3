import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import write_tiny  # noqa: E402

# Set 0 omits layer 0 (exercises the first-layer residual path); layer 1 is
# omitted by every set, so it is never built and holds no KV.
TINY_SETS = [[0, 1], [1, 3], [1, 4]]
TINY_LAYERS = 6
HIDDEN_SETS = [[2, 3], [1, 3], [1, 4]]  # the hidden router's pool: every set keeps layer 0


@dataclass(frozen=True)
class TinyModels:
    """One architecture's tiny checkpoints: base, pudding dir, static set checkpoints."""

    base: Path
    pudding: Path
    static: dict  # set id -> checkpoint with that set's layers physically removed


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """arch -> TinyModels, written on first use (a second of CPU each)."""
    from vllm_pudding.artifact import build_pudding_dir
    from vllm_pudding.config import PuddingConfig
    from vllm_pudding.static import write_static_checkpoint

    built = {}

    def get(arch: str) -> TinyModels:
        if arch not in built:
            root = tmp_path_factory.mktemp(f"tiny-{arch}")
            base = write_tiny(arch, root / "base", num_layers=TINY_LAYERS)
            pudding = build_pudding_dir(base, PuddingConfig(omission_sets=TINY_SETS),
                                        root / "tiny-pudding")
            static = {i: write_static_checkpoint(base, s, root / f"set{i}")
                      for i, s in enumerate(TINY_SETS)}
            built[arch] = TinyModels(base, pudding, static)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def tiny_base(tiny_models) -> Path:
    return tiny_models("llama").base


@pytest.fixture(scope="session")
def tiny_pudding(tiny_models) -> Path:
    return tiny_models("llama").pudding


@pytest.fixture(scope="session")
def tiny_static(tiny_models):
    """set id -> checkpoint with that set's layers physically removed."""
    return tiny_models("llama").static


@pytest.fixture(scope="session")
def pudding_llm(tiny_pudding):
    """One PuDDing engine for every test that needs it (engine start ~20 s)."""
    from engines import engine

    with engine(tiny_pudding) as llm:
        yield llm


@pytest.fixture(scope="session")
def routed_dir(tiny_base, tmp_path_factory):
    """The tiny pudding dir with a text router trained on a planted signal (router_utils):
    topic prompts whose best sets differ. Shared by the routing and dispatch tests (the
    router is trained once); tests that change a dir copy it first."""
    from router_utils import train_planted_router
    from vllm_pudding.artifact import build_pudding_dir
    from vllm_pudding.config import PuddingConfig
    from vllm_pudding.router.install import install_router

    root = tmp_path_factory.mktemp("routed")
    planted = train_planted_router(root / "planted", TINY_SETS)
    d = build_pudding_dir(tiny_base, PuddingConfig(omission_sets=TINY_SETS), root / "pd")
    install_router(d, planted)
    return d


@pytest.fixture(scope="session")
def routed_llm(routed_dir):
    """One engine on `routed_dir` (with its tokenizer: text prompts are routed) for the
    routing tests and the data-parallel tests' offline oracle."""
    from engines import engine

    with engine(routed_dir, skip_tokenizer_init=False) as llm:
        yield llm


@pytest.fixture(scope="session")
def planted(tiny_base, tmp_path_factory):
    """(router folder, head, encoder) of a hidden router (layer-0 states) trained on the
    planted signal for HIDDEN_SETS; trained once for the in-engine routing and Ray tests."""
    from router_utils import train_planted_hidden_router

    root = tmp_path_factory.mktemp("hidden")
    return train_planted_hidden_router(root / "planted", tiny_base, HIDDEN_SETS)


@pytest.fixture(scope="session")
def hidden_dir(tiny_base, planted, tmp_path_factory):
    """The tiny base as a pudding dir over HIDDEN_SETS with the hidden router installed."""
    from vllm_pudding.artifact import build_pudding_dir
    from vllm_pudding.config import PuddingConfig
    from vllm_pudding.router.install import install_router

    d = build_pudding_dir(tiny_base, PuddingConfig(omission_sets=HIDDEN_SETS),
                          tmp_path_factory.mktemp("hidden-pd") / "pd")
    install_router(d, planted[0])
    return d


@pytest.fixture(scope="session")
def hidden_llm(hidden_dir):
    """One engine on `hidden_dir` (in-engine routing tests; the Ray app's offline oracle)."""
    from engines import engine

    with engine(hidden_dir, skip_tokenizer_init=False) as llm:
        yield llm
