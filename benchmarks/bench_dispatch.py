"""Set-affine data-parallel dispatch vs vLLM's own balancing vs dense, 2 replicas x 1 core.

Three `vllm serve --data-parallel-size 2` servers on 127.0.0.1, up together, each engine
bound to its own core (`VLLM_CPU_OMP_THREADS_BIND="0|1"`), same engine settings (bf16,
eager, no prefix caching, one API server process so that one dispatcher sees every
request and the front end takes less of the 2 cores):
- affine: the default pudding dir, the `dp_dispatch` patch with its default options but
  no regrouping during the run (`regroup_every` huge: the groups stay those of a uniform
  prior, so the alternated workloads do not move them);
- vllm-lb: the same dir with `"pudding_dispatch": "vllm"` (vLLM's set-blind balancer);
- dense: the base model (no sets).
Seeded decode-heavy workloads (token ids from the six tasks' validation prompts, as
workloads.py): `--num` requests x `--prompt` tokens / `--out` tokens (ignore eos), all sent
at once through the OpenAI client, each pinned by `pudding_set`: (a) the 10 sets in turn,
shuffled; (b) sets 0 and 4 (in different groups of the uniform prior's plan). Every
repetition times every server on both workloads, order reversed on odd repetitions.
Reported: decode throughput (output tokens / wall seconds), p50 / p99 request latency,
per-repetition ratios (median, min-max), the prediction from the one-engine composition
figures (dispatch_model.composition_prediction), and the affine server's dispatch
counters (requests per engine and set, spills).

    .venv/bin/python benchmarks/bench_dispatch.py --reps 3 \\
        --out benchmarks/results/dispatch.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

from dispatch_model import composition_prediction
from harness import machine_info, percentile, spread

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

ENGINE = ["--dtype", "bfloat16", "--max-model-len", "1024", "--enforce-eager",
          "--no-enable-prefix-caching", "--seed", "0", "--data-parallel-size", "2",
          "--api-server-count", "1"]
AFFINE = {"pudding_dispatch": {"regroup_every": 10 ** 9}}
VLLM_LB = {"pudding_dispatch": "vllm"}
WORKLOAD_SETS = {"a_all_10_sets": list(range(10)), "b_2_sets": [0, 4]}
PAIRS = {"affine / vllm-lb": ("affine", "vllm-lb"), "affine / dense": ("affine", "dense"),
         "vllm-lb / dense": ("vllm-lb", "dense")}


def start_servers(base: Path, pudding_dir: Path, tmp: Path) -> dict:
    from server_utils import VllmServer

    specs = {"affine": (pudding_dir, ["--additional-config", json.dumps(AFFINE)]),
             "vllm-lb": (pudding_dir, ["--additional-config", json.dumps(VLLM_LB)]),
             "dense": (base, [])}
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"
    servers = {}
    try:
        for name, (model, extra) in specs.items():
            servers[name] = VllmServer(model, tmp / f"serve-{name}.log",
                                       [*ENGINE, "--served-model-name", name, *extra],
                                       startup_timeout=900)
    except BaseException:
        stop(servers)
        raise
    return servers


def stop(servers: dict) -> None:
    for server in servers.values():
        server.stop()


async def send_all(server, name: str, prompts: list[list[int]], sets: list, out: int) -> dict:
    """Every request at once; wall seconds and per-request latencies."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="none", timeout=3600,
                         max_retries=0)

    async def one(prompt, set_id):
        body = {"ignore_eos": True}
        if set_id is not None:
            body["vllm_xargs"] = {"pudding_set": set_id}
        t0 = time.perf_counter()
        resp = await client.completions.create(model=name, prompt=prompt, max_tokens=out,
                                               temperature=0.0, extra_body=body)
        assert resp.usage.completion_tokens == out, resp.usage
        return time.perf_counter() - t0

    start = time.perf_counter()
    latencies = await asyncio.gather(*(one(p, s) for p, s in zip(prompts, sets)))
    wall = time.perf_counter() - start
    await client.close()
    return {"seconds": wall, "tok_per_s": len(prompts) * out / wall,
            "p50_s": percentile(latencies, 0.5), "p99_s": percentile(latencies, 0.99)}


def workload_sets(num: int, seed: int) -> dict[str, list[int]]:
    out = {}
    for name, sets in WORKLOAD_SETS.items():
        ids = [sets[i % len(sets)] for i in range(num)]
        random.Random(seed).shuffle(ids)
        out[name] = ids
    return out


def run(args) -> dict:
    import tempfile

    from transformers import AutoTokenizer

    from vllm_pudding.default_model import ensure_default_model
    from vllm_pudding.default_pudding import ensure_default_pudding_dir
    from workloads import workload_tokens

    base, pudding_dir = ensure_default_model(), ensure_default_pudding_dir()
    prompts = workload_tokens(AutoTokenizer.from_pretrained(base), args.num, args.prompt,
                              args.seed)
    sets = workload_sets(args.num, args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-dispatch-"))
    servers = start_servers(base, pudding_dir, tmp)
    try:
        for name, server in servers.items():  # warm-up, untimed
            asyncio.run(send_all(server, name, prompts[:4], [None if name == "dense" else 0] * 4,
                                 8))
        runs = {w: {c: [] for c in servers} for w in sets}
        for rep in range(args.reps):
            order = list(servers) if rep % 2 == 0 else list(reversed(servers))
            for workload, ids in sets.items():
                for name in order:
                    req_sets = [None] * len(ids) if name == "dense" else ids
                    runs[workload][name].append(asyncio.run(
                        send_all(servers[name], name, prompts, req_sets, args.out)))
            print(f"rep {rep + 1}/{args.reps}: " + ", ".join(
                f"{w} {c} {runs[w][c][-1]['tok_per_s']:.1f} tok/s"
                for w in sets for c in servers), flush=True)
        counters = dispatch_counters(servers["affine"])
    finally:
        stop(servers)
    return {"meta": {"command": " ".join(sys.argv), "reps": args.reps, "seed": args.seed,
                     "requests": args.num, "prompt_tokens": args.prompt,
                     "output_tokens": args.out, "server_flags": ENGINE,
                     "env": {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}, "affine_options": AFFINE,
                     "machine": machine_info(), "logs": str(tmp)},
            "prediction": {w: composition_prediction(len(s), 2) for w, s in WORKLOAD_SETS.items()},
            "runs": runs, "summary": summarise(runs), "affine_dispatch_counters": counters}


def summarise(runs: dict) -> dict:
    out = {}
    for workload, by_config in runs.items():
        row = {c: {k: spread([r[k] for r in rs]) for k in ("tok_per_s", "p50_s", "p99_s")}
               for c, rs in by_config.items()}
        for label, (num, den) in PAIRS.items():
            row[label] = spread([a["tok_per_s"] / b["tok_per_s"]
                                 for a, b in zip(by_config[num], by_config[den])])
        out[workload] = row
    return out


def dispatch_counters(server) -> dict:
    from server_utils import pudding_metrics

    counts = {}
    for (name, labels), value in pudding_metrics(server).items():
        labels = dict(labels)
        if name == "vllm:pudding_dispatch_requests_total" and value:
            key = f"engine {labels['engine']} set {labels['set']} spilled {labels['spilled']}"
            counts[key] = value
    return counts


def report(result: dict) -> str:
    lines = []
    for workload, row in result["summary"].items():
        pred = result["prediction"][workload]["affine_over_blind"]
        lines.append(f"{workload}: predicted affine/blind {pred:.3f}")
        for c in ("affine", "vllm-lb", "dense"):
            r = row[c]
            lines.append(f"  {c:8s} {r['tok_per_s']['median']:.1f} tok/s, p50 "
                         f"{r['p50_s']['median']:.2f} s, p99 {r['p99_s']['median']:.2f} s")
        for label in PAIRS:
            r = row[label]
            lines.append(f"  {label}: {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f})")
    lines.append(f"affine dispatch counters: {result['affine_dispatch_counters']}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--out-tokens", dest="out", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", dest="json_out", type=Path, required=True)
    args = ap.parse_args()
    result = run(args)
    print(report(result))
    args.json_out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
