"""PNG charts of bench_report.py's result (matplotlib, Agg: no display needed).

Why charts at all: a ratio table hides how wide the repetition spread is next to the
gap to a target; every bar here carries its min-max spread as an error bar.
Re-plot a saved result with `python benchmarks/plots.py X.json OUT_DIR`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench_engine import bound_value, target_value  # noqa: E402

ORDER = ("dense", "static", "one set", "mixed")


def write_plots(result: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = {"ratios.png": ratios_chart, "latency.png": latency_chart,
              "serving.png": serving_chart, "memory.png": memory_chart}
    paths = []
    for name, draw in charts.items():
        fig = draw(result)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=120)
        plt.close(fig)
        paths.append(out_dir / name)
    return paths


def _errs(stats: list[dict]) -> list[list[float]]:
    """Asymmetric min-max error bars around the medians."""
    return [[s["median"] - s["min"] for s in stats], [s["max"] - s["median"] for s in stats]]


def all_ratios(result: dict) -> dict:
    return {**result["protocol"]["ratios"], **result["latency"]["ratios"],
            **result["serving"]["ratios"]}


def ratios_chart(result: dict):
    ratios = all_ratios(result)
    labels, stats = list(ratios), list(ratios.values())
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(labels) + 1.5))
    y = range(len(labels))
    ax.barh(y, [s["median"] for s in stats], xerr=_errs(stats), color="tab:blue",
            alpha=0.7, capsize=3)
    for i, label in enumerate(labels):
        target, bound = target_value(label), bound_value(label, result)
        if bound is not None:
            ax.plot(bound, i, marker="D", color="tab:green", label="union bound")
        elif target is not None:
            ax.plot(target, i, marker="|", markersize=14, color="tab:red", label="target")
    ax.axvline(1.0, color="grey", linewidth=0.8)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"speed ratio (median, min-max over {result['reps']} reps)")
    handles = dict(zip(*reversed(ax.get_legend_handles_labels())))
    ax.legend(handles.values(), handles.keys(), loc="lower right", fontsize=7)
    return fig


def _grouped_bars(ax, groups: list[str], series: dict[str, list[dict]], ylabel: str):
    width = 0.8 / len(series)
    for j, (name, stats) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [s["median"] for s in stats], width, yerr=_errs(stats), capsize=2,
               label=name)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def latency_chart(result: dict):
    ms = result["latency"]["ms"]
    kinds = {"prefill": [c for c in ms if c.startswith("prefill")],
             "generate": [c for c in ms if not c.startswith("prefill")]}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (kind, cases) in zip(axes, kinds.items()):
        configs = [c for c in ORDER if cases and c in ms[cases[0]]]
        _grouped_bars(ax, cases, {c: [ms[case][c] for case in cases] for c in configs},
                      "ms (batch 1)")
        ax.set_title(f"batch-1 latency, {kind}")
    return fig


def serving_chart(result: dict):
    thr = result["serving"]["throughput"]
    configs = [c for c in ORDER if c in thr]
    fig, ax = plt.subplots(figsize=(7, 4))
    _grouped_bars(ax, configs, {kind: [thr[c][kind] for c in configs]
                                for kind in ("output_tok_s", "total_tok_s")}, "tokens / s")
    tok = result["serving"]["tokens"]
    ax.set_title(f"serving mix: {tok['requests']} requests, one generate call")
    return fig


def memory_chart(result: dict):
    weights, kv = result["weights"]["bytes"], result["kv_tokens"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    axes[0].bar(list(weights), [b / (1 << 20) for b in weights.values()], color="tab:purple")
    axes[0].set_ylabel("MiB of parameters")
    axes[0].set_title("weights held")
    axes[1].bar(list(kv), list(kv.values()), color="tab:orange")
    axes[1].set_ylabel("tokens")
    axes[1].set_title("KV capacity, same KV memory")
    return fig


if __name__ == "__main__":
    print(*write_plots(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])), sep="\n")
