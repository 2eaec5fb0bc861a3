"""The A/B timing protocol shared by bench_engine.py and bench_report.py.

Why one module: every figure must come from the same engines, the same settings and
the same alternation (../shared/BENCHMARKS.md), so the engine factory, the timed
`llm.generate` call, the repetition loop and the ratio statistics live here once.

Configs name what is timed: an engine plus a set id per request ("one set": set 0
for all, "mixed": requests spread evenly over every pool set, None: stock engine).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, NamedTuple

MAX_MODEL_LEN = 1024
KV_BYTES = 1 << 30
SETTINGS = ("bf16, enforce_eager=True, kv_cache_memory_bytes=1GiB, enable_prefix_caching=False, "
            "vLLM defaults otherwise")


class Setup(NamedTuple):
    base: Path
    pudding_dir: Path
    static_dir: Path
    pool: object  # vllm_pudding.config.PuddingConfig
    num_layers: int
    tokenizer: object


def prepare(pudding_dir: Path | None = None) -> Setup:
    """A pudding dir (default: the default one), its base model, and the static
    checkpoint without set 0."""
    from transformers import AutoTokenizer

    from vllm_pudding.artifact import base_model, load_pudding_dir
    from vllm_pudding.default_pudding import ensure_default_pudding_dir
    from vllm_pudding.static import cached_static_checkpoint

    pudding_dir = Path(pudding_dir) if pudding_dir else ensure_default_pudding_dir()
    base = base_model(pudding_dir)
    pool = load_pudding_dir(pudding_dir)
    num_layers = json.loads((base / "config.json").read_text())["num_hidden_layers"]
    static_dir = cached_static_checkpoint(base, pool.omission_sets[0])
    return Setup(base, pudding_dir, static_dir, pool, num_layers,
                 AutoTokenizer.from_pretrained(base))


def make_engine(path: Path):
    from vllm import LLM

    # No prefix caching: every repetition sends the same seeded prompts, and cache hits
    # would time only each prompt's last token (the report before this fix did).
    return LLM(model=str(path), dtype="bfloat16", max_model_len=MAX_MODEL_LEN,
               enforce_eager=True, kv_cache_memory_bytes=KV_BYTES, seed=0,
               enable_prefix_caching=False)


def make_engines(setup: Setup) -> dict:
    return {"dense": make_engine(setup.base), "static": make_engine(setup.static_dir),
            "pudding": make_engine(setup.pudding_dir)}


def configs(num_sets: int) -> dict[str, tuple[str, Callable[[int], list]]]:
    """name -> (engine, set id per request for n requests; None = no set)."""
    return {
        "dense": ("dense", lambda n: [None] * n),
        "static": ("static", lambda n: [None] * n),
        "one set": ("pudding", lambda n: [0] * n),
        "mixed": ("pudding", lambda n: [i % num_sets for i in range(n)]),
    }


def _requests(prompts, max_tokens: int, set_ids) -> tuple[list, list]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = [SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                             detokenize=False,
                             extra_args=None if s is None else {"pudding_set": s})
              for s in set_ids]
    return [TokensPrompt(prompt_token_ids=p) for p in prompts], params


def timed(llm, prompts, max_tokens: int, set_ids) -> float:
    inputs, params = _requests(prompts, max_tokens, set_ids)
    start = time.perf_counter()
    llm.generate(inputs, params, use_tqdm=False)
    return time.perf_counter() - start


class Drive(NamedTuple):
    """One batch of requests stepped to completion by hand (what `LLM.generate` does)."""
    seconds: float
    finish_s: list[float]
    """Per request, in submission order: seconds from the batch's start to its end."""
    running: list[int]
    """The scheduler's running-request count after each step (engines need log stats)."""


def drive(llm, prompts, max_tokens: int, set_ids) -> Drive:
    """Submit every request at once, step the engine, record who ends when.

    Why not `LLM.generate`: it returns only at the end, so per-request latency and the
    scheduler's concurrency (`SchedulerStats.num_running_reqs`, present only when the
    engine was made with `disable_log_stats=False`) need the step loop itself.
    """
    engine, running = llm.llm_engine, []
    client = engine.engine_core
    get_output = client.get_output

    def spy():
        out = get_output()
        if out.scheduler_stats is not None:
            running.append(out.scheduler_stats.num_running_reqs)
        return out

    inputs, params = _requests(prompts, max_tokens, set_ids)
    client.get_output = spy
    try:
        start = time.perf_counter()
        ids = [f"drive-{start}-{i}" for i in range(len(inputs))]
        for rid, p, sp in zip(ids, inputs, params):
            engine.add_request(rid, p, sp)  # outputs carry this id (vLLM suffixes its own)
        finish = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    finish[out.request_id] = time.perf_counter() - start
        seconds = time.perf_counter() - start
    finally:
        del client.get_output
    return Drive(seconds, [finish[i] for i in ids], running)


def kv_tokens(llm) -> int:
    cache = llm.llm_engine.vllm_config.cache_config
    return cache.num_gpu_blocks * cache.block_size


def alternate(engines: dict, configs: dict, cases: dict, reps: int,
              warmup_tokens: int | None = None, label: str = "") -> dict:
    """times[case][config] -> seconds per repetition.

    One untimed warm-up per case and config (4 prompts, `warmup_tokens` or the case's
    own output length), then `reps` repetitions; each repetition times every config on
    every case, in forward order on even repetitions and reversed order on odd ones.
    """
    for prompts, out in cases.values():
        n = min(4, len(prompts))
        for eng, sets in configs.values():
            timed(engines[eng], prompts[:n], min(out, warmup_tokens or out), sets(n))
    times = {case: {c: [] for c in configs} for case in cases}
    for rep in range(reps):
        for case, (prompts, out) in cases.items():
            order = list(configs) if rep % 2 == 0 else list(reversed(configs))
            for name in order:
                eng, sets = configs[name]
                times[case][name].append(timed(engines[eng], prompts, out, sets(len(prompts))))
        print(f"{label}rep {rep + 1}/{reps}: " + ", ".join(
            f"{w} {c} {times[w][c][-1]:.2f}s" for w in cases for c in configs), flush=True)
    return times


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 1]."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio_stats(times: dict, pairs: dict[str, tuple[str, str]]) -> dict:
    """Per-repetition speed ratios (time of reference / time of subject), summarised.

    Labelled '<pair label>, <case>'; pairs whose configs a case lacks are left out.
    """
    out = {}
    for case, by_config in times.items():
        for label, (ref, subject) in pairs.items():
            if ref in by_config and subject in by_config:
                per_rep = [a / b for a, b in zip(by_config[ref], by_config[subject])]
                out[f"{label}, {case}"] = spread(per_rep)
    return out


def machine_info() -> dict:
    """What the figures were measured on (they mean nothing without it)."""
    import torch
    import vllm

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "cpus_usable": affinity,
            "python": platform.python_version(), "torch": torch.__version__,
            "vllm": vllm.__version__, "load_avg": os.getloadavg()}
