"""Source groups of train examples, so held-out rows share no source with training rows.

Why: a router picked on held-out rows that share their source with its training rows is
picked optimistically. Measured on the first 640 train docs per task (the committed
labels): the tail split held out no HellaSwag row whose first sentence was seen in
training, but 93 of its 128 held-out rows share an activity label with training rows,
and those 640 rows are ActivityNet captions only (145 labels), while 828 of 1,000
validation rows have labels none of them has (mostly WikiHow). A held-out part made of
whole groups measures what validation will see: sources the router never saw.

Groups, per task (from the example's own text):
- HellaSwag: the activity label (`"Making a cake: ..."`);
- BoolQ: the passage's article title (`"Persian language -- ..."`);
- WinoGrande: the pair of options (twin sentences share it);
- PIQA: the goal; ARC: the question.
"""

from __future__ import annotations

import hashlib
import os.path
from collections import Counter

import numpy as np

from vllm_pudding.data.mc import MCExample


def source_group(ex: MCExample) -> str:
    context = ex.contexts[0]
    if ex.task == "hellaswag":
        return context.partition(": ")[0]
    if ex.task == "boolq":
        return context.partition(" -- ")[0]
    if ex.task == "winogrande":
        stem = os.path.commonprefix(list(ex.contexts))
        return "|".join(sorted(c[len(stem):].strip().lower() for c in ex.contexts))
    return context.strip().lower()


def split_by_group(groups: list[str], holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows): whole groups held out, in a fixed pseudo-random order
    (a hash of the group), until at least `holdout` of the rows are held out."""
    order = sorted(set(groups), key=lambda g: hashlib.sha1(g.encode()).hexdigest())
    want = max(1, int(round(len(groups) * holdout)))
    held, n = set(), 0
    sizes = Counter(groups)
    for g in order:
        if n >= want:
            break
        held.add(g)
        n += sizes[g]
    is_held = np.array([g in held for g in groups])
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)
