"""Patch: compiled PuDDing layers are compiled at engine start, not on the first request.

What: wraps `CPUWorker.compile_or_warm_up_model` (after the KV cache exists): when
`vllm_pudding.layer_compile` compiles the layers, run one dummy forward
(`profile_run`, every layer on `max_num_batched_tokens` tokens).
Why: vLLM warms a compiled model up at start, but PuDDing models run with
`enforce_eager=True` (compilation mode NONE) and an explicit KV size, where the CPU
worker skips its warm-up; the first request then waited ~30 s for 23 layer compiles.
The layers' token dimension is unbacked (layer_compile), so that one forward covers
every batch size and nothing compiles while serving.
Removable when: vLLM warms up models that compile themselves (a model hook).
"""

from __future__ import annotations

from vllm_pudding.patches import on_cpu, wrap


def apply() -> None:
    if not on_cpu():  # elsewhere layer compile is opt-in and compiles on first use
        return
    from vllm.v1.worker.cpu_worker import CPUWorker

    wrap(CPUWorker, "compile_or_warm_up_model", _wrap)


def _wrap(original):
    def compile_or_warm_up_model(self, *args, **kwargs):
        from vllm_pudding import layer_compile

        if layer_compile.requested(self.vllm_config):
            self.model_runner.profile_run()
        return original(self, *args, **kwargs)

    return compile_or_warm_up_model
