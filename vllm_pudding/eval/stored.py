"""Reading stored evaluation results (`python -m vllm_pudding.eval --out F`), old files too.

    from vllm_pudding.eval.stored import read_results
    data = read_results("benchmarks/results/eval/calibrated_k7_val_a.json.gz")

Every consumer of per-example scores (router labels and report, serving-aware pools)
reads them through `read_results`, so acc_norm has one definition everywhere.

Files written before `ScoredExample.num_chars` existed (the committed
`calibrated_k7_val_*`, `labels_train640`, `provisional_pool_n200`) hold each choice's
summed log-prob, the gold index, doc ids and continuation bytes, but not the choice
lengths in characters that acc_norm divides by (lm-eval's definition). `read_results`
rebuilds such a file's examples with the task loaders (the file's split, n and seed,
all offline), checks that they are the scored ones (doc id, gold, and each choice's
continuation bytes), and fills `num_chars`: acc_norm as lm-eval computes it, with no
re-scoring.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path
from typing import Any

from vllm_pudding.data.mc import MCExample


def read_json(path: Path | str) -> dict[str, Any]:
    """A results JSON as written, plain or gzipped (committed score tables are .json.gz)."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return json.loads(raw)


def read_results(path: Path | str) -> dict[str, Any]:
    """A results JSON whose every stored example carries `num_chars` (filled if missing)."""
    data = read_json(path)
    try:
        fill_choice_lengths(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return data


def scored_examples(data: dict[str, Any], label: str) -> dict[str, list]:
    """One run's stored examples of `read_results` data as `ScoredExample`s, per task."""
    import msgspec

    from vllm_pudding.eval.scoring import ScoredExample

    return {t: [msgspec.convert(e, ScoredExample) for e in v]
            for t, v in data.get("examples", {}).get(label, {}).items()}


@functools.lru_cache(maxsize=64)
def _rebuilt(task: str, split: str, n: int | None, seed: int | None) -> dict[str, MCExample]:
    from vllm_pudding.data.tasks import examples

    return {ex.doc_id: ex for ex in examples(task, split, n=n, seed=seed)}


def fill_choice_lengths(data: dict[str, Any]) -> int:
    """Adds `num_chars` to every example of `data["examples"]` that lacks it; returns how
    many were filled. Raises ValueError when the rebuilt examples are not the scored ones."""
    split = data.get("split", "validation")
    n = data.get("n") or None
    seed = data.get("seed") if split == "validation" else None
    filled = 0
    for label, tasks in data.get("examples", {}).items():
        for task, exs in tasks.items():
            if all("num_chars" in e for e in exs):
                continue
            source = _rebuilt(task, split, n, seed)
            for e in exs:
                e["num_chars"] = _choice_lengths(source, e, f"{label}/{task}")
                filled += 1
    return filled


def _choice_lengths(source: dict[str, MCExample], stored: dict[str, Any], where: str) -> list[int]:
    ex = source.get(stored["doc_id"])
    if ex is None:
        raise ValueError(f"{where}: doc {stored['doc_id']!r} is not among the rebuilt examples "
                         "(split, n or seed of the file differ from the task loaders')")
    num_bytes = [len(ex.pair(c)[1].encode("utf-8")) for c in range(ex.num_choices)]
    if ex.gold != stored["gold"] or num_bytes != stored["num_bytes"]:
        raise ValueError(f"{where}: doc {stored['doc_id']!r} differs from the rebuilt example "
                         f"(gold {stored['gold']} vs {ex.gold}, continuation bytes "
                         f"{stored['num_bytes']} vs {num_bytes})")
    return [len(ex.choice_text(c)) for c in range(ex.num_choices)]
