"""Set-affine dispatch vs set-blind balancing vs dense, 2 replicas x 1 core, through
vLLM data parallel and through the Ray Serve app.

Up to five servers on 127.0.0.1, up together (`--modes` picks), each engine bound to its
own core (replica i on core i), same engine settings (bf16, eager, no prefix caching):
- affine: `vllm serve --data-parallel-size 2` of the default pudding dir
  (`VLLM_CPU_OMP_THREADS_BIND="0|1"`, one API server process so that one dispatcher sees
  every request and the front end takes less of the 2 cores), the `dp_dispatch` patch
  with its default options but no regrouping during the run (`regroup_every` huge: the
  groups stay those of a uniform prior, so the alternated workloads do not move them);
- vllm-lb: the same with `"pudding_dispatch": "vllm"` (vLLM's set-blind balancer);
- ray-affine: `pudding serve-ray` of the same dir, 2 replicas x 1 core (its own Ray in
  a loopback-only namespace, tests/ray_utils.RayApp), the ingress dispatching by the
  same policy, options as affine;
- ray-default: the same app with `routing="serve"`: the 2 replicas are one Serve
  deployment and Ray Serve's default request router (power of two choices on queue
  length, set-blind) picks;
- dense: `vllm serve --data-parallel-size 2` of the base model (no sets).
The Ray apps start a routing worker too (the dir has a router); requests here are pinned,
so it stays idle.
Seeded decode-heavy workloads (token ids from the six tasks' validation prompts, as
workloads.py): `--num` requests x `--prompt` tokens / `--out` tokens (ignore eos), all sent
at once through the OpenAI client, each pinned by `pudding_set`: (a) the 10 sets in turn,
shuffled; (b) sets 0 and 4 (in different groups of the uniform prior's plan). Every
repetition times every server on both workloads, order reversed on odd repetitions.
Reported (the JSON, and a markdown report beside it): decode throughput (output tokens /
wall seconds), p50 / p99 request latency, per-repetition ratios (median, min-max;
ray-affine / ray-default is the Ray baseline's), the prediction from the one-engine
composition figures (dispatch_model.composition_prediction), and the dispatch counters
(affine: requests per engine and set, spills; ray-affine: each replica's group, what it
was sent and served; ray-default: which replica answered each set's requests).

Memory: each Ray app of the default dir holds ~8-9 GB (KV 1 GiB per engine), each DP
server ~5-6 GB, so all five modes at once need more than this machine's 24 GB. The
quoted DP run (affine, vllm-lb, dense: benchmarks/results/dispatch.json) is one run; the
Ray baseline is another (root, for the namespace; a quiet machine: nothing else on the 2
cores; ~10 min: ~3 min to start the two apps, ~2 min per repetition; ~17 GB):

    PUDDING_CACHE=/root/.cache/vllm-pudding-main .venv/bin/python \\
        benchmarks/bench_dispatch.py --reps 3 --modes ray-affine,ray-default \\
        --out benchmarks/results/dispatch_ray.json

and the DP one as before (the default modes, affine,vllm-lb,dense; ~15 min). A smoke
run (`--reps 1 --num 16`, a few minutes) checks that the modes work;
`--kv-cache-memory-bytes` shrinks every engine's KV for it.
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
          "--no-enable-prefix-caching", "--seed", "0"]
DP = ["--data-parallel-size", "2", "--api-server-count", "1"]
AFFINE = {"pudding_dispatch": {"regroup_every": 10 ** 9}}
VLLM_LB = {"pudding_dispatch": "vllm"}
RAY_AFFINE = {"routing": "affine", "cores_per_replica": 1,
              "dispatch": AFFINE["pudding_dispatch"]}
RAY_DEFAULT = {"routing": "serve", "cores_per_replica": 1}
MODES = ("affine", "vllm-lb", "ray-affine", "ray-default", "dense")
DEFAULT_MODES = "affine,vllm-lb,dense"  # all five at once need more than 24 GB
WORKLOAD_SETS = {"a_all_10_sets": list(range(10)), "b_2_sets": [0, 4]}
PAIRS = {"affine / vllm-lb": ("affine", "vllm-lb"), "affine / dense": ("affine", "dense"),
         "vllm-lb / dense": ("vllm-lb", "dense"),
         "ray-affine / ray-default": ("ray-affine", "ray-default"),
         "ray-affine / affine": ("ray-affine", "affine"),
         "ray-default / vllm-lb": ("ray-default", "vllm-lb"),
         "ray-affine / dense": ("ray-affine", "dense")}


def start_servers(base: Path, pudding_dir: Path, tmp: Path, modes: list[str],
                  engine: list[str]) -> dict:
    from ray_utils import RayApp
    from server_utils import VllmServer

    dp = {"affine": (pudding_dir, ["--additional-config", json.dumps(AFFINE)]),
          "vllm-lb": (pudding_dir, ["--additional-config", json.dumps(VLLM_LB)]),
          "dense": (base, [])}
    ray = {"ray-affine": RAY_AFFINE, "ray-default": RAY_DEFAULT}
    os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1"  # DP engines; Ray replicas set their own
    servers = {}
    try:
        for name in modes:
            log = tmp / f"serve-{name}.log"
            if name in ray:
                servers[name] = RayApp(pudding_dir, log, [*engine, "--served-model-name", name],
                                       replicas=2, options=ray[name], startup_timeout=900)
            else:
                model, extra = dp[name]
                servers[name] = VllmServer(model, log, [*engine, *DP, "--served-model-name",
                                                        name, *extra], startup_timeout=900)
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
    started = time.perf_counter()
    engine = ENGINE + (["--kv-cache-memory-bytes", str(args.kv_bytes)] if args.kv_bytes else [])
    servers = start_servers(base, pudding_dir, tmp, args.modes, engine)
    startup_s = time.perf_counter() - started
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
        counters = dispatch_counters(servers)
    finally:
        stop(servers)
    return {"meta": {"command": " ".join(sys.argv), "reps": args.reps, "seed": args.seed,
                     "requests": args.num, "prompt_tokens": args.prompt,
                     "output_tokens": args.out, "modes": args.modes, "server_flags": engine,
                     "dp_flags": DP, "env": {"VLLM_CPU_OMP_THREADS_BIND": "0|1"},
                     "affine_options": AFFINE, "ray_options": {"ray-affine": RAY_AFFINE,
                                                              "ray-default": RAY_DEFAULT},
                     "startup_s": startup_s, "wall_s": time.perf_counter() - started,
                     "machine": machine_info(), "logs": str(tmp)},
            "prediction": {w: composition_prediction(len(s), 2) for w, s in WORKLOAD_SETS.items()},
            "runs": runs, "summary": summarise(runs), "dispatch_counters": counters}


def summarise(runs: dict) -> dict:
    out = {}
    for workload, by_config in runs.items():
        row = {c: {k: spread([r[k] for r in rs]) for k in ("tok_per_s", "p50_s", "p99_s")}
               for c, rs in by_config.items()}
        for label, (num, den) in PAIRS.items():
            if num not in by_config or den not in by_config:
                continue
            row[label] = spread([a["tok_per_s"] / b["tok_per_s"]
                                 for a, b in zip(by_config[num], by_config[den])])
        out[workload] = row
    return out


def dispatch_counters(servers: dict) -> dict:
    """Where each server's requests went, per mode that can say."""
    from server_utils import pudding_metrics

    out = {}
    if "affine" in servers:
        counts = {}
        for (name, labels), value in pudding_metrics(servers["affine"]).items():
            labels = dict(labels)
            if name == "vllm:pudding_dispatch_requests_total" and value:
                key = (f"engine {labels['engine']} set {labels['set']} "
                       f"spilled {labels['spilled']}")
                counts[key] = value
        out["affine"] = counts
    if "ray-affine" in servers:
        out["ray-affine"] = [
            {k: r.get(k) for k in ("replica", "sets", "dispatched", "spills")}
            | {"served": (r.get("engine") or {}).get("sets_served")}
            for r in servers["ray-affine"].get("/pudding/replicas")["replicas"]]
    if "ray-default" in servers:
        out["ray-default"] = servers["ray-default"].get("/pudding/replicas")["answered"]
    return out


def report(result: dict) -> str:
    """Markdown: per workload, each mode's figures and the ratios (median, min-max over
    the repetitions), then the dispatch counters."""
    meta = result["meta"]
    lines = [f"# Dispatch over 2 replicas x 1 core (`{meta['command']}`)", "",
             f"{meta['requests']} requests x {meta['prompt_tokens']} prompt / "
             f"{meta['output_tokens']} output tokens, all at once, n = {meta['reps']} "
             f"repetitions (median, min-max); load average at the end "
             f"{meta['machine'].get('load_avg')}.", ""]
    for workload, row in result["summary"].items():
        pred = result["prediction"][workload]["affine_over_blind"]
        lines += [f"## {workload} (one-engine composition prediction of affine / blind: "
                  f"{pred:.3f})", "", "| mode | decode tok/s | p50 s | p99 s |",
                  "|---|---|---|---|"]
        for c in meta["modes"]:
            r = row[c]
            lines.append(f"| {c} | " + " | ".join(
                f"{r[k]['median']:.{d}f} ({r[k]['min']:.{d}f}-{r[k]['max']:.{d}f})"
                for k, d in (("tok_per_s", 1), ("p50_s", 2), ("p99_s", 2))) + " |")
        lines += ["", "| ratio of decode tok/s | median (min-max) |", "|---|---|"]
        for label in (p for p in PAIRS if p in row):
            r = row[label]
            lines.append(f"| {label} | {r['median']:.3f} ({r['min']:.3f}-{r['max']:.3f}) |")
        lines.append("")
    for mode, counters in result["dispatch_counters"].items():
        lines.append(f"- {mode} dispatch counters: `{json.dumps(counters)}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--out-tokens", dest="out", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--modes", default=DEFAULT_MODES,
                    help=f"comma-separated, of {', '.join(MODES)} (default: {DEFAULT_MODES})")
    ap.add_argument("--kv-cache-memory-bytes", dest="kv_bytes", type=int, default=None,
                    help="KV cache per engine (default: VLLM_CPU_KVCACHE_SPACE=1, 1 GiB); "
                    "each Ray app holds ~8-9 GB with 1 GiB per engine")
    ap.add_argument("--out", dest="json_out", type=Path, required=True)
    args = ap.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown or not args.modes:
        ap.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    result = run(args)
    text = report(result)
    print(text)
    args.json_out.write_text(json.dumps(result, indent=1))
    args.json_out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    main()
