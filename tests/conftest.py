import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import write_tiny_llama  # noqa: E402

# Set 0 omits layer 0 (exercises the first-layer residual path); layer 1 is
# omitted by every set, so it is never built and holds no KV.
TINY_SETS = [[0, 1], [1, 3], [1, 4]]
TINY_LAYERS = 6


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "base", num_layers=TINY_LAYERS)


@pytest.fixture(scope="session")
def tiny_pudding(tiny_base, tmp_path_factory) -> Path:
    from vllm_pudding.artifact import build_pudding_dir
    from vllm_pudding.config import PuddingConfig

    return build_pudding_dir(tiny_base, PuddingConfig(omission_sets=TINY_SETS),
                             tmp_path_factory.mktemp("pud") / "tiny-pudding")


@pytest.fixture(scope="session")
def tiny_static(tiny_base, tmp_path_factory):
    """set id -> checkpoint with that set's layers physically removed."""
    from vllm_pudding.static import write_static_checkpoint

    root = tmp_path_factory.mktemp("static")
    return {i: write_static_checkpoint(tiny_base, s, root / f"set{i}")
            for i, s in enumerate(TINY_SETS)}


@pytest.fixture(scope="session")
def pudding_llm(tiny_pudding):
    """One PuDDing engine for every test that needs it (engine start ~20 s)."""
    from engines import engine

    with engine(tiny_pudding) as llm:
        yield llm
