"""Markdown for bench_report.py's result: every figure with the protocol beside it.

Why separate: the run writes JSON first; the tables are a pure function of it, so a
report can be re-rendered from a saved JSON (`python benchmarks/report_md.py X.json`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench_engine import kv_lines, ratio_table

MIB = 1 << 20


def render(result: dict) -> str:
    sizes = result["workloads"]
    parts = [header(result), "## Prefill / decode throughput",
             f"prefill {sizes['prefill']}; decode {sizes['decode']}.", "", *ratio_table(
        result["protocol"]["ratios"], result), "", *latency_section(result),
        *serving_section(result), *mixed_section(result), *weights_section(result),
        "## KV capacity", *kv_lines(result), "", *router_section(result)]
    if result.get("plots"):
        parts += ["## Plots", *[f"- `{p}`" for p in result["plots"]]]
    return "\n".join(parts) + "\n"


def header(result: dict) -> str:
    m, pool = result["machine"], result["pool"]
    quick = "\n**--quick smoke run: tiny workloads, the numbers mean nothing.**\n" \
        if result["quick"] else ""
    return (f"# Benchmark report\n{quick}\n"
            f"Machine: {m['processor']}, {m['cpu_count']} CPUs ({m['cpus_usable']} usable), "
            f"{m['platform']}, Python {m['python']}, torch {m['torch']}, vLLM {m['vllm']}, "
            f"load average at the end {', '.join(f'{x:.2f}' for x in m['load_avg'])}.\n"
            f"Settings: {result['settings']}; {result['reps']} alternated repetitions, seed "
            f"{result['seed']}; pool of {len(pool['omission_sets'])} sets, k = {pool['k']} of "
            f"L = {pool['num_layers']}{' (provisional)' if pool['provisional'] else ''}; "
            f"static and one set use set 0 {pool['omission_sets'][0]}.\n")


def latency_section(result: dict) -> list[str]:
    lat = result["latency"]
    lines = ["## Batch-1 latency (ms, median; min-max)",
             "| case | dense | static | pudding (set 0) | dense/pudding | static/pudding |",
             "|---|---|---|---|---|---|"]
    for case, by_c in lat["ms"].items():
        cells = [f"{by_c[c]['median']:.1f} ({by_c[c]['min']:.1f}-{by_c[c]['max']:.1f})"
                 for c in ("dense", "static", "one set")]
        ratios = [_ratio(lat["ratios"][f"{pair}, {case}"])
                  for pair in ("one set vs dense", "one set vs static")]
        lines.append(f"| {case} | {' | '.join(cells + ratios)} |")
    return lines + ["", *ratio_table(lat["ratios"], result), ""]


def serving_section(result: dict) -> list[str]:
    srv = result["serving"]
    tok = srv["tokens"]
    lines = [f"## Serving mix ({tok['requests']} requests, {tok['prompt']} prompt tokens, "
             f"{tok['output']} output tokens, one generate call)",
             "| config | output tok/s | total tok/s |", "|---|---|---|"]
    for config, t in srv["throughput"].items():
        lines.append(f"| {config} | {_ratio(t['output_tok_s'], 1)} | "
                     f"{_ratio(t['total_tok_s'], 1)} |")
    return lines + ["", *ratio_table(srv["ratios"], result), ""]


def mixed_section(result: dict) -> list[str]:
    md = result["mixed_decode"]
    return ["## Mixed-set decode against the kept-layer union",
            f"Union of kept layers over the pool: {md['union_of_kept_layers']} of "
            f"{md['num_layers']}.",
            f"- mixed / one set: {_ratio(md['mixed_vs_one_set'])}, bound (L-k)/union = "
            f"{md['bound_vs_one_set']:.3f}",
            f"- mixed / dense: {_ratio(md['mixed_vs_dense'])}, bound L/union = "
            f"{md['bound_vs_dense']:.3f}", ""]


def weights_section(result: dict) -> list[str]:
    w = result["weights"]
    lines = ["## Weights held (engine parameters)", "| engine | MiB | vs dense | decoder layers |",
             "|---|---|---|---|"]
    for name, size in w["bytes"].items():
        lines.append(f"| {name} | {size / MIB:.1f} | {w['vs_dense'][name]:.3f} | "
                     f"{w['layers_built'][name]} |")
    savings = w["shared_core_savings_bytes"]
    core = w["omitted_by_all"]
    lines += ["", f"PuDDing builds every layer some set keeps: this pool omits {core} layer(s) "
              f"in every set, so it saves {savings[str(core)] / MIB:.1f} MiB against dense. "
              f"A pool whose sets all shared c omitted layers would save c x "
              f"{w['decoder_layer_bytes'] / MIB:.2f} MiB (c = k is the static checkpoint): "
              + ", ".join(f"c={c}: {b / MIB:.1f} MiB" for c, b in savings.items()) + ".", ""]
    return lines


def router_section(result: dict) -> list[str]:
    router = result["router"]
    if "skipped" in router:
        return ["## Router overhead", f"Skipped: {router['skipped']}.", ""]
    lines = ["## Router overhead", "| prompt | router | router ms | share of one-set latency | "
             "target |", "|---|---|---|---|---|"]
    for case, r in router.items():
        how = ("hidden, in engine (routed - pinned)" if r.get("kind") == "hidden"
               else r.get("kind", "text"))
        lines.append(f"| {case} | {how} | {_ratio(r['router_ms'], 2)} | "
                     f"{_ratio(r['share_of_one_set_latency'], 4)} | <= {r['target_max_share']} |")
    worker = {c: r for c, r in router.items() if r.get("worker_route_ms") is not None}
    for case, r in worker.items():
        share = f" = {100 * r['worker_share']:.3f}% of its one-set latency" if r.get(
            "worker_share") is not None else ""
        lines.append(f"- {case}: the routing step itself (pooling, head, re-plan, timed in the "
                     f"worker) takes {r['worker_route_ms']:.3f} ms per routed prompt{share}.")
    return lines + [""]


def _ratio(s: dict, digits: int = 3) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text())))
