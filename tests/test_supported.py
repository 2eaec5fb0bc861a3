"""GPU-path guards, checked on CPU: what PuDDing refuses at start, what it imports, and how a
step's plan moves data (issue 11).

No GPU with vLLM is available here, so every configuration PuDDing cannot serve correctly
must be refused before an engine starts, the plugin must not import CPU-only vLLM modules
on other platforms (they replace torch.cuda objects at import), and the per-step plan must
move its indices to the device in one copy, never inside the layer loop.
"""

import math
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from engines import greedy, token_prompts


def _engine_config(model, **kwargs):
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=str(model), kv_cache_memory_bytes=64 << 20,
                      **kwargs).create_engine_config()


@pytest.mark.parametrize("kwargs, env, match", [
    (dict(attention_backend="FLASHINFER"), {}, r"attention backend FLASHINFER.*supported: "
                                               r"FLASH_ATTN, TRITON_ATTN, CPU_ATTN"),
    (dict(enable_lora=True), {}, r"LoRA"),
    (dict(speculative_config={"method": "ngram", "num_speculative_tokens": 2,
                              "prompt_lookup_max": 3}), {}, r"speculative decoding"),
    (dict(kv_transfer_config={"kv_connector": "ExampleConnector", "kv_role": "kv_both"}), {},
     r"KV connectors"),
    (dict(kv_offloading_size=1.0), {}, r"KV offloading"),
    (dict(prefix_match_unit=16), {}, r"prefix_match_unit=16"),
    (dict(decode_context_parallel_size=2, tensor_parallel_size=2), {}, r"context parallelism"),
    (dict(enable_dbo=True), {}, r"micro-batching"),
    (dict(pipeline_parallel_size=2), {}, r"pipeline parallelism"),
    (dict(watermark_config={"key": 3}), {}, r"watermark_config force vLLM's Model Runner V2"),
    (dict(attention_config={"hisparse_config": {}}), {}, r"hisparse_config force"),
    ({}, {"VLLM_USE_V2_MODEL_RUNNER": "1"}, r"VLLM_USE_V2_MODEL_RUNNER=1 force"),
])
def test_unsupported_configuration_is_refused_at_config_time(tiny_pudding, monkeypatch,
                                                             kwargs, env, match):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="vllm-pudding cannot serve this configuration: .*"
                                         + match):
        _engine_config(tiny_pudding, **kwargs)


def test_supported_configuration_passes_and_plain_models_are_untouched(tiny_pudding, tiny_base):
    cfg = _engine_config(tiny_pudding)
    assert cfg.model_config.enforce_eager and not cfg.use_v2_model_runner
    assert _engine_config(tiny_base, enable_lora=True).lora_config is not None


def test_several_problems_are_named_together(tiny_pudding):
    with pytest.raises(ValueError, match="LoRA.*; pipeline parallelism|pipeline.*; .*LoRA"):
        _engine_config(tiny_pudding, enable_lora=True, pipeline_parallel_size=2)


def _group(name="CPU_ATTN", kernel_block_size=None, kv_group=0):
    backend = SimpleNamespace(get_name=lambda: name)
    return SimpleNamespace(backend=backend, kernel_block_size=kernel_block_size,
                           kv_cache_group_id=kv_group,
                           kv_cache_spec=SimpleNamespace(block_size=128))


@pytest.mark.parametrize("groups, match", [
    ([[_group("FLASHINFER")]], r"attention backend FLASHINFER.*--attention-backend"),
    ([[_group("FLASH_ATTN", kernel_block_size=64)]], r"kernel blocks of 64"),
])
def test_worker_refuses_what_the_config_could_not_show(groups, match):
    from vllm_pudding.supported import check_attention_groups

    with pytest.raises(ValueError, match=match):
        check_attention_groups(groups)


@pytest.mark.parametrize("name", ["FLASH_ATTN", "TRITON_ATTN", "CPU_ATTN"])
def test_worker_accepts_supported_backends(name):
    """Several KV cache groups too (Gemma 3's sliding-window and full-attention layers)."""
    from vllm_pudding.supported import check_attention_groups

    check_attention_groups([[_group(name)]])
    check_attention_groups([[_group(name)], [_group(name, kv_group=1)]])


NON_CPU_REGISTER = textwrap.dedent("""
    import sys, types, torch
    import vllm.platforms as platforms
    from vllm.platforms.interface import Platform, PlatformEnum
    # vLLM's GPU code cannot import on this CPU build once the platform says CUDA: import
    # what the patches wrap first, and stand in for vllm.platforms.cuda.
    import vllm.v1.worker.gpu_model_runner, vllm.v1.core.kv_cache_utils  # noqa
    from vllm.v1.attention.backends.registry import AttentionBackendEnum as B

    class Candidate(tuple):
        backend = property(lambda self: self[1])
        priority = property(lambda self: self[2])
        def _replace(self, priority):
            return Candidate((self[0], self[1], priority))

    class CudaPlatform(Platform):
        _enum = PlatformEnum.CUDA
        device_name = device_type = "cuda"

        @classmethod
        def get_valid_backends(cls, *args, **kwargs):
            names = [B.FLASHINFER, B.FLASH_ATTN, B.TRITON_ATTN, B.FLEX_ATTENTION]
            return [Candidate((None, b, i)) for i, b in enumerate(names)], {}

    cuda = types.ModuleType("vllm.platforms.cuda")
    cuda.CudaPlatform = CudaPlatform
    sys.modules["vllm.platforms.cuda"] = cuda
    platforms._current_platform = CudaPlatform()

    replaced = {"Event": torch.cuda.Event, "Stream": torch.cuda.Stream,
                "current_stream": torch.cuda.current_stream,
                "synchronize": torch.accelerator.synchronize,
                "get_memory_info": torch.accelerator.get_memory_info,
                "pin_memory": torch.Tensor.pin_memory}
    import vllm_pudding
    vllm_pudding.register()
    now = {"Event": torch.cuda.Event, "Stream": torch.cuda.Stream,
           "current_stream": torch.cuda.current_stream,
           "synchronize": torch.accelerator.synchronize,
           "get_memory_info": torch.accelerator.get_memory_info,
           "pin_memory": torch.Tensor.pin_memory}
    print("CPU_MODULES", sorted(m for m in sys.modules if m.startswith("vllm.v1.worker.cpu")))
    print("REPLACED", sorted(k for k in now if now[k] is not replaced[k]))

    import vllm.config as config
    pudding = types.SimpleNamespace(model_config=types.SimpleNamespace(
        hf_config=types.SimpleNamespace(pudding={"omission_sets": [[1]]})))
    plain = types.SimpleNamespace(model_config=types.SimpleNamespace(
        hf_config=types.SimpleNamespace()))
    for label, cfg in (("PUDDING", pudding), ("PLAIN", plain)):
        with config.set_current_vllm_config(cfg):
            valid, invalid = CudaPlatform.get_valid_backends()
        print(label, [(c.backend.name, c.priority) for c in valid],
              sorted(b.name for b in invalid))
""")


def test_non_cpu_platform_imports_no_cpu_worker_and_narrows_backend_choice():
    """On a CUDA platform, register() leaves torch.cuda alone and CUDA's automatic backend
    choice sees only the supported backends, for PuDDing models only."""
    out = subprocess.run([sys.executable, "-c", NON_CPU_REGISTER], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert lines["CPU_MODULES"] == "[]"
    assert lines["REPLACED"] == "[]"
    assert lines["PUDDING"] == "[('FLASH_ATTN', 0), ('TRITON_ATTN', 1)] " \
                               "['FLASHINFER', 'FLEX_ATTENTION']"
    assert lines["PLAIN"] == ("[('FLASHINFER', 0), ('FLASH_ATTN', 1), ('TRITON_ATTN', 2), "
                              "('FLEX_ATTENTION', 3)] []")


def test_private_builder_is_made_in_the_groups_config_context():
    """Builders read settings (e.g. the forced FlashAttention version) from the current
    config while they are made; a builder made mid-forward would see none."""
    from vllm.config import get_current_vllm_config_or_none

    from vllm_pudding.sub_batch import private_builder

    seen = []

    class Builder:
        def __init__(self, spec, names, vllm_config, device):
            seen.append(get_current_vllm_config_or_none())

    engine_config = SimpleNamespace(name="the engine's config")
    base = Builder.__new__(Builder)
    base.kv_cache_spec, base.layer_names, base.vllm_config, base.device = \
        None, ["l0"], engine_config, "cpu"
    group = SimpleNamespace(get_metadata_builder=lambda i: base)
    assert get_current_vllm_config_or_none() is None
    first = private_builder(group)
    assert seen == [engine_config]
    assert private_builder(group) is first and len(seen) == 1, "made once per group"


def _last_plan(_model):
    """Per sub-batch of the last step's plan: (layers with tables, its layers, block-table
    widths, the width its longest sequence needs, the runner's full width)."""
    from vllm_pudding import depth

    plan = depth._state.plan
    out = []
    for sub in {id(s): s for s in plan._layers.values() if hasattr(s, "per_layer")}.values():
        group, cm = plan.groups[sub.names[0]]
        ub = cm.seq_lens_cpu_upper_bound[sub.rows].max().item()
        widths = sorted({md.block_table.shape[1] for md, _ in sub.per_layer.values()})
        out.append((sorted(sub.per_layer), sub.layers, widths,
                    math.ceil(ub / group.kv_cache_spec.block_size), cm.block_table_tensor.shape[1]))
    return out


def test_one_host_to_device_copy_per_step_none_in_the_layer_loop(pudding_llm):
    from vllm_pudding.depth import step_stats

    prompts = token_prompts([150, 7, 40, 90], seed=11)  # 150 tokens: chunked prefill
    before = pudding_llm.apply_model(step_stats)[0]
    pudding_llm.generate(prompts, [greedy(6, set_id=i % 3) for i in range(4)], use_tqdm=False)
    after = pudding_llm.apply_model(step_stats)[0]
    steps = after["steps"] - before.get("steps", 0)
    assert after["mixed_set_steps"] > before.get("mixed_set_steps", 0), "the batch must mix sets"
    assert after["copies_plan"] - before["copies_plan"] == steps
    assert after["copies_in_layer_loop"] == 0
    plan = pudding_llm.apply_model(_last_plan)[0]
    assert plan, "the last step's plan must hold sub-batches"
    for built, layers, widths, want, full in plan:
        assert built == sorted(layers), "tables only for the layers that use the sub-batch"
        assert widths == [want] and want < full, "tables as wide as the longest sequence needs"


class _Rows:
    """A sub-batch stand-in: token indices and a no-op metadata swap."""

    def __init__(self, tokens):
        import torch

        self.token_index = torch.tensor(tokens)

    def attention_for(self, name, idx):
        from contextlib import nullcontext

        return nullcontext()


def test_layer_runner_gathers_once_per_run_of_a_sub_batch():
    """Layers 1-2 run rows {0, 2}, layer 3 none, layer 4 rows {0, 2} again, layer 5 all:
    one gather and one scatter serve layers 1-4, and the states equal a per-layer
    gather/scatter reference."""
    import torch

    from vllm_pudding import depth

    torch.manual_seed(0)
    sub = _Rows([0, 2])
    plan = {0: depth.ALL, 1: sub, 2: sub, 3: depth.NONE, 4: sub, 5: depth.ALL}
    weights = [torch.randn(4, 4) for _ in range(6)]
    calls = []

    class Layer:
        def __init__(self, i):
            self.i, self.self_attn = i, SimpleNamespace(attn=SimpleNamespace(layer_name=str(i)))

        def __call__(self, pos, h, r, **_):
            calls.append((self.i, tuple(h.shape)))
            r = h if r is None else h + r
            return torch.tanh(r @ weights[self.i]), r

    runner = depth.LayerRunner.__new__(depth.LayerRunner)
    runner.plan = SimpleNamespace(for_layer=plan.__getitem__, pending=[])
    hidden = torch.randn(3, 4)
    runner.positions, runner.hidden, runner.residual = torch.arange(3), hidden.clone(), None
    runner.kwargs, runner._owned, runner._held = {}, False, None
    gathers = []
    real_gather = runner._gather
    runner._gather = lambda s: (gathers.append(s), real_gather(s))
    for i in range(6):
        runner.run(i, Layer(i))
    got_h, got_r = runner.states()

    h, r = hidden.clone(), None
    for i in range(6):
        rows = sub.token_index if plan[i] is sub else None
        if plan[i] is depth.NONE:
            continue
        if rows is None:
            h, r = Layer(i)(None, h, r)
        else:
            r = torch.zeros_like(h) if r is None else r
            hh, rr = Layer(i)(None, h[rows], r[rows])
            h, r = h.index_copy(0, rows, hh), r.index_copy(0, rows, rr)
    assert len(gathers) == 1
    assert [c for c in calls[:5]] == [(0, (3, 4)), (1, (2, 4)), (2, (2, 4)), (4, (2, 4)),
                                      (5, (3, 4))]
    assert torch.equal(got_h, h) and torch.equal(got_r, r)


def test_kv_slots_refuse_a_cache_that_needs_zeroing():
    """Mamba layers or a mixed-precision KV cache make vLLM zero new blocks through the
    stock layout's segment tables: refused when the engine sizes its KV cache."""
    from vllm_pudding.patches.kv_slots import _no_zeroing

    _no_zeroing(SimpleNamespace(needs_kv_cache_zeroing=False))
    with pytest.raises(NotImplementedError, match="KV cache zeroing"):
        _no_zeroing(SimpleNamespace(needs_kv_cache_zeroing=True))
