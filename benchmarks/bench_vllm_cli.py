"""vLLM's own benchmark CLI (`vllm bench throughput`, `vllm bench serve`) on the default
pudding model and on its dense base, same settings, one run each.

    .venv/bin/python benchmarks/bench_vllm_cli.py --out benchmarks/results/vllm_cli.json

Three engines, all eager (`--enforce-eager`: vLLM's whole-model compile of the dense
engine and PuDDing's per-layer compile take minutes at start on this shared 2-core CPU;
the README's dense-default section compares compiled engines): dense SmolLM2-135M-Instruct, `pudding/smollm2-135m` with its hidden
router (requests routed), and `pudding/smollm2-135m` with
`--additional-config '{"pudding_spread_sets": "round_robin"}'` (requests spread evenly
over the 10 sets: every batch mixes depths). For each: `vllm bench throughput`, then
`vllm serve` on 127.0.0.1 and `vllm bench serve` against it. The exact command lines
are printed and kept in the JSON. One run each, no alternation: indicative figures,
not the protocol benchmarks of bench_report.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

NAME = "pudding/smollm2-135m"
SPREAD = json.dumps({"pudding_spread_sets": "round_robin"})
WORKLOAD = ["--dataset-name", "random", "--random-input-len", "128", "--random-output-len",
            "32", "--num-prompts", "64", "--seed", "0"]
ENGINE = ["--dtype", "bfloat16", "--max-model-len", "1024", "--enforce-eager"]
ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}


def configs() -> list[tuple[str, str, list[str]]]:
    from vllm_pudding.default_model import ensure_default_model

    return [("dense", str(ensure_default_model()), []),
            ("pudding, routed", NAME, []),
            ("pudding, spread over 10 sets", NAME, ["--additional-config", SPREAD])]


def vllm(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("vllm")), *args]


def run(cmd: list[str], log: Path) -> float:
    print("$", shlex.join(cmd), flush=True)
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **ENV}).returncode
    if rc != 0:
        raise SystemExit(f"failed ({rc}), see {log}")
    return time.perf_counter() - t0


def throughput(model: str, extra: list[str], tmp: Path, tag: str) -> dict:
    out = tmp / f"throughput-{tag}.json"
    cmd = vllm("bench", "throughput", "--model", model, *WORKLOAD, *ENGINE, *extra,
               "--output-json", str(out))
    wall = run(cmd, tmp / f"throughput-{tag}.log")
    return {"command": shlex.join(cmd), "wall_s": wall, **json.loads(out.read_text())}


def serve(model: str, extra: list[str], tmp: Path, tag: str) -> dict:
    from server_utils import VllmServer

    t0 = time.perf_counter()
    server = VllmServer(model, tmp / f"serve-{tag}.log", [*ENGINE, *extra], startup_timeout=900)
    start = time.perf_counter() - t0
    try:
        cmd = vllm("bench", "serve", "--model", model, "--base-url", server.base_url,
                   *WORKLOAD, "--ignore-eos", "--save-result", "--result-dir", str(tmp),
                   "--result-filename", f"serve-{tag}.json")
        run(cmd, tmp / f"bench-serve-{tag}.log")
    finally:
        server.stop()
    server_cmd = shlex.join(["vllm", "serve", model, *ENGINE, *extra])
    result = json.loads((tmp / f"serve-{tag}.json").read_text())
    keep = ("completed", "failed", "duration", "request_throughput", "output_throughput",
            "total_token_throughput", "mean_ttft_ms", "median_ttft_ms", "mean_tpot_ms",
            "median_tpot_ms", "mean_itl_ms")
    return {"server": server_cmd, "command": shlex.join(cmd), "server_start_s": start,
            **{k: result[k] for k in keep}}


def markdown(rows: list[dict]) -> str:
    dense = rows[0]
    lines = ["| engine | `bench throughput` tok/s (req/s) | vs dense | `bench serve` output tok/s "
             "| vs dense | median TTFT / TPOT (ms) |", "|---|---|---|---|---|---|"]
    for r in rows:
        t, s = r["throughput"], r["serve"]
        lines.append(
            f"| {r['label']} | {t['tokens_per_second']:.0f} ({t['requests_per_second']:.2f}) | "
            f"{t['tokens_per_second'] / dense['throughput']['tokens_per_second']:.2f} | "
            f"{s['output_throughput']:.1f} | "
            f"{s['output_throughput'] / dense['serve']['output_throughput']:.2f} | "
            f"{s['median_ttft_ms']:.0f} / {s['median_tpot_ms']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-vllm-cli-") as d:
        tmp = Path(d)
        for i, (label, model, extra) in enumerate(configs()):
            rows.append({"label": label, "model": model,
                         "throughput": throughput(model, extra, tmp, str(i)),
                         "serve": serve(model, extra, tmp, str(i))})
            print(json.dumps(rows[-1], indent=1), flush=True)
    doc = {"created": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(),
           "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(),
           "workload": " ".join(WORKLOAD), "engine": " ".join(ENGINE), "rows": rows,
           "note": "one run each, CPU shared with other jobs: indicative only"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
