"""The pudding section is validated with errors that name the field."""

import json

import pytest

from vllm_pudding.artifact import build_pudding_dir, load_pudding_dir
from vllm_pudding.config import PuddingConfig


@pytest.mark.parametrize("section, field", [
    ({"omission_sets": [[1, 40]]}, r"omission_sets\[0\].*out of range"),
    ({"omission_sets": [[2, 2]]}, r"omission_sets\[0\].*duplicate"),
    ({"omission_sets": [[3, 1]]}, r"omission_sets\[0\].*sorted"),
    ({"omission_sets": [[1, 2], [3]]}, r"omission_sets.*differ in size"),
    ({"omission_sets": []}, r"omission_sets.*empty"),
    ({"omission_sets": [[1]], "default_set": 1}, r"default_set"),
    ({"omission_sets": [[1]], "bogus": 1}, r"bogus"),
    ({"omission_sets": "1,2"}, r"omission_sets"),
    ({}, r"omission_sets"),
    ([[1, 2]], r"must be an object"),
    ({"omission_sets": [[-1]]}, r"out of range"),
    ({"omission_sets": [list(range(6))]}, r"every layer"),
    ({"omission_sets": [[1], [2]], "routable_sets": []}, r"routable_sets.*at least one"),
    ({"omission_sets": [[1], [2]], "routable_sets": [1, 0]}, r"routable_sets.*sorted"),
    ({"omission_sets": [[1], [2]], "routable_sets": [0, 2]}, r"routable_sets.*0\.\.1"),
    ({"omission_sets": [[1], [2]], "routable_sets": [1]}, r"routable_sets.*default_set 0"),
])
def test_bad_sections_name_the_field(section, field):
    with pytest.raises(ValueError, match=field):
        PuddingConfig.parse(section, num_layers=6)


def test_empty_sets_are_valid():
    cfg = PuddingConfig.parse({"omission_sets": [[]]}, num_layers=6)
    assert cfg.k == 0 and cfg.omitted_by_all() == set()


def test_omitted_by_all_and_masks():
    cfg = PuddingConfig.parse({"omission_sets": [[0, 1], [1, 3], [1, 4]]}, num_layers=6)
    assert cfg.omitted_by_all() == {1}
    assert cfg.kept_mask(6)[1] == [True, False, True, False, True, True]


@pytest.mark.parametrize("value", ["abc", 2.5, -1, 3, True, [1], {"a": 1}])
def test_bad_set_ids(value):
    cfg = PuddingConfig.parse({"omission_sets": [[1], [2], [3]]}, num_layers=6)
    with pytest.raises(ValueError, match="pudding_set"):
        cfg.resolve_set_id(value)


@pytest.mark.parametrize("value, expected", [(None, 2), (0, 0), ("1", 1), (1.0, 1)])
def test_set_ids(value, expected):
    cfg = PuddingConfig.parse({"omission_sets": [[1], [2], [3]], "default_set": 2}, 6)
    assert cfg.resolve_set_id(value) == expected


def test_pudding_dir_roundtrip_and_malformed_file(tiny_base, tmp_path):
    pool = PuddingConfig(omission_sets=[[1, 2], [2, 3]], default_set=1, provisional=True)
    out = build_pudding_dir(tiny_base, pool, tmp_path / "p", meta={"note": "test"})
    assert load_pudding_dir(out) == pool
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["PuddingLlamaForCausalLM"]
    assert json.loads((out / "pudding_meta.json").read_text())["provisional"] is True
    assert (out / "model.safetensors").is_symlink()
    config["pudding"]["omission_sets"] = [[1, 99], [2, 3]]
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json.*omission_sets\[0\]"):
        load_pudding_dir(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_pudding_dir(out)


@pytest.mark.parametrize("arch, pudding_arch", [
    ("LlamaForCausalLM", "PuddingLlamaForCausalLM"),
    ("MistralForCausalLM", "PuddingMistralForCausalLM"),
    ("Qwen2ForCausalLM", "PuddingQwen2ForCausalLM"),
    ("Gemma3ForCausalLM", "PuddingGemma3ForCausalLM"),
    ("GPT2LMHeadModel", r"vllm-pudding supports \[.*'Qwen2ForCausalLM'"),
])
def test_pudding_dir_architectures(tiny_base, tmp_path, arch, pudding_arch):
    """Each base architecture becomes its registered PuDDing variant, which `pudding
    static` turns back; others are refused naming what is supported (or why not)."""
    import shutil

    import vllm_pudding
    from vllm_pudding.static import write_static_checkpoint

    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    config = json.loads((base / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "architectures": [arch]}))
    pool = PuddingConfig(omission_sets=[[1, 2], [2, 3]])
    if not pudding_arch.startswith("Pudding"):
        with pytest.raises(ValueError, match=pudding_arch):
            build_pudding_dir(base, pool, tmp_path / "p")
        return
    out = build_pudding_dir(base, pool, tmp_path / "p")
    assert json.loads((out / "config.json").read_text())["architectures"] == [pudding_arch]
    assert pudding_arch in vllm_pudding.ARCHITECTURES
    static = write_static_checkpoint(out, [1, 2], tmp_path / "s")
    assert json.loads((static / "config.json").read_text())["architectures"] == [arch]


def test_static_checkpoint_keeps_per_layer_lists(tiny_base, tmp_path):
    """Per-layer attention types follow the kept layers (Gemma 3, Qwen2 sliding layers)."""
    import shutil

    from vllm_pudding.static import write_static_checkpoint

    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    config = json.loads((base / "config.json").read_text())
    types = ["sliding_attention"] * 5 + ["full_attention"]
    config.update(layer_types=types, max_window_layers=4)
    (base / "config.json").write_text(json.dumps(config))
    out = json.loads((write_static_checkpoint(base, [1, 5], tmp_path / "s") / "config.json")
                     .read_text())
    assert out["num_hidden_layers"] == 4
    assert out["layer_types"] == ["sliding_attention"] * 4
    assert out["max_window_layers"] == 3  # kept layers 0, 2, 3 lie below the old 4


def test_cached_static_checkpoint_is_written_once(tiny_base, tmp_path, monkeypatch):
    """Benchmarks take their static checkpoint from the cache: the same base and set
    reuse one dir (no copy per run), another set or a rewritten base gets its own."""
    import os
    import shutil

    from vllm_pudding.static import cached_static_checkpoint

    monkeypatch.setenv("PUDDING_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "base"
    shutil.copytree(tiny_base, base)
    first = cached_static_checkpoint(base, [1, 2])
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert cached_static_checkpoint(base, [2, 1]) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((first / "config.json").read_text())["num_hidden_layers"] == \
        json.loads((base / "config.json").read_text())["num_hidden_layers"] - 2
    other = cached_static_checkpoint(base, [1, 3])
    weights = base / "model.safetensors"
    os.utime(weights, ns=(stamp + 10**9, stamp + 10**9))
    rewritten = cached_static_checkpoint(base, [1, 2])
    assert len({first, other, rewritten}) == 3
    assert sorted(p.name.startswith(".") for p in first.parent.iterdir()) == [False] * 3


def test_kv_slots_count_per_group():
    """A layer's KV slot is its rank among its set's kept layers in its KV cache group; a
    block holds the most layers any set keeps in one group (Gemma-like groups: 2 slots,
    where vLLM's own layout gives each block a page per layer of the largest group, 3)."""
    from vllm_pudding import depth

    pool = PuddingConfig(omission_sets=[[0, 5], [3, 5], [4, 5]])  # 5: never built
    groups = [[0, 3, 4], [1, 2]]  # e.g. sliding-window layers, full-attention layers
    assert depth.slots_needed(pool, groups) == 2
    assert depth.slots_needed(pool, [[0, 1, 2, 3, 4]]) == 4  # one group: L - k
    depth.configure(pool, 6)
    depth.set_kv_layout(10, groups)
    try:
        assert depth.num_slots() == 2 and depth.kv_layout()["groups"] == groups
        slots = depth._state.slot_of
        assert slots[0, [3, 4, 1, 2]].tolist() == [0, 1, 0, 1]  # set 0 keeps 3, 4 | 1, 2
        assert slots[1, [0, 4, 1, 2]].tolist() == [0, 1, 0, 1]
        assert slots[2, [0, 3, 1, 2]].tolist() == [0, 1, 0, 1]
        assert depth.all_slot_blocks([7]) == [7, 17]
    finally:
        depth._state.pool = None  # this test process serves no model


def test_pool_must_fit_model(tiny_base, tmp_path):
    with pytest.raises(ValueError, match="out of range"):
        build_pudding_dir(tiny_base, PuddingConfig(omission_sets=[[7]]), tmp_path / "p")


@pytest.mark.parametrize("device, eager, asked, want", [
    ("cpu", False, None, True), ("cuda", False, None, False), ("cuda", False, True, True),
    ("cpu", True, True, False), ("cpu", False, False, False)])
def test_layer_compile_default_on_cpu_never_eager(device, eager, asked, want):
    """Layer bodies compile by default on CPU (measured there), elsewhere only when asked,
    never in eager mode; the choice is resolved once (the config hook runs again after
    eager is forced)."""
    from types import SimpleNamespace

    from vllm_pudding import layer_compile

    extra = {} if asked is None else {layer_compile.CONFIG_KEY: asked}
    cfg = SimpleNamespace(additional_config=extra,
                          device_config=SimpleNamespace(device_type=device),
                          model_config=SimpleNamespace(enforce_eager=eager))
    layer_compile.resolve(cfg)
    cfg.model_config.enforce_eager = True  # what engine_config does next
    layer_compile.resolve(cfg)
    assert layer_compile.requested(cfg) is want


def test_layer_compile_flag_must_be_bool():
    from types import SimpleNamespace

    from vllm_pudding import layer_compile

    cfg = SimpleNamespace(additional_config={layer_compile.CONFIG_KEY: "yes"},
                          model_config=SimpleNamespace(enforce_eager=False))
    with pytest.raises(ValueError, match="pudding_compile_layers"):
        layer_compile.resolve(cfg)


def test_compiled_layer_runs_without_guards_and_other_inputs_run_eager():
    """One graph per layer, dispatched without dynamo's guards (as vLLM's compile wrapper
    does); an input the graph was not made for (another dtype, a non-contiguous view)
    runs eager instead of through it, so results never come from the wrong graph."""
    import torch

    from vllm_pudding.layer_compile import CPU_INDUCTOR_OPTIONS, CompiledForward

    class Body(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, positions, hidden, residual):
            residual = hidden + residual
            return self.proj(residual) * positions[:, None], residual

    torch.manual_seed(0)
    body = Body()
    fwd = CompiledForward(body.forward, CPU_INDUCTOR_OPTIONS)
    assert fwd.guarded is not hasattr(torch.compiler, "skip_all_guards_unsafe")

    def inputs(n, dtype=torch.float32):
        return torch.arange(n, dtype=dtype), torch.randn(n, 8, dtype=dtype), None

    with torch.inference_mode():
        for n in (5, 1, 12):  # one graph for any token count, the first residual None
            args = inputs(n)
            got, want = fwd(*args), body.forward(args[0], args[1], torch.zeros_like(args[1]))
            assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want))
        assert fwd.traced and fwd.eager_calls == 0
        # after the compiling call, dynamo's code runs as a plain function (no frame hook)
        assert fwd.direct_calls == (0 if fwd.guarded else 2)
        wide = torch.randn(6, 16)[:, ::2]  # a strided view: not what the graph assumed
        pos, _, _ = inputs(6)
        got = fwd(pos, wide, torch.zeros(6, 8))
        assert torch.allclose(got[0], body.forward(pos, wide, torch.zeros(6, 8))[0])
        assert fwd.eager_calls == (0 if fwd.guarded else 1)
    kind = fwd.kind
    assert _kind_of(inputs(3, torch.float64)) != kind != _kind_of(inputs(3)[:2] + (wide,))


def test_compiled_layer_with_a_graph_break_is_not_called_directly():
    """A forward dynamo splits (a graph break) leaves resume functions that would run
    eager if dynamo's code were called as a plain function: such a layer keeps going
    through torch.compile, and its results stay right."""
    import torch

    from vllm_pudding.layer_compile import CPU_INDUCTOR_OPTIONS, CompiledForward

    class Broken(torch.nn.Module):
        def forward(self, positions, hidden, residual):
            residual = hidden + residual
            torch._dynamo.graph_break()
            return residual * 2, residual

    body = Broken()
    fwd = CompiledForward(body.forward, CPU_INDUCTOR_OPTIONS)
    with torch.inference_mode():
        for n in (4, 7):
            h = torch.randn(n, 8)
            got = fwd(torch.arange(n), h, None)
            assert torch.equal(got[0], h * 2)
    assert fwd.traced and fwd.direct is None and fwd.direct_calls == 0


def _kind_of(args):
    import torch

    from vllm_pudding.layer_compile import _input_kind

    a = list(args)
    if a[2] is None:
        a[2] = torch.zeros_like(a[1])
    return _input_kind(tuple(a), {})
