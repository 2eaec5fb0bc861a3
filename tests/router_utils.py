"""A router trained on a planted signal: each topic's prompts have a different best set.

Labels are planted (the topic's set scores 0, the others -1), features are the real
MiniLM encoder's, and held-out prompts use filler words never seen in training, so a
router that routes them right has learned the topic, not the strings.
"""

from __future__ import annotations

import random
from pathlib import Path

TOPICS = {  # topic keywords -> planted best set of the tiny pool (3 sets)
    0: ["rain", "weather", "forecast", "storm", "cloudy"],
    1: ["recipe", "oven", "bake", "flour", "cooking"],
    2: ["football", "goal", "match", "score", "team"],
}
FILLER_TRAIN = ["today", "tell me", "please", "about the", "what is", "I wonder", "and"]
FILLER_HELD = ["quickly", "explain", "my friend asked", "yesterday", "in detail"]


def planted_texts(n_per_topic: int, seed: int, filler) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, sets = [], []
    for set_id, words in TOPICS.items():
        for _ in range(n_per_topic):
            parts = rng.sample(words, 3) + rng.sample(filler, 2)
            rng.shuffle(parts)
            texts.append(" ".join(parts))
            sets.append(set_id)
    return texts, sets


def _fit_planted(encode, per_topic: int, num_sets: int, epochs: int):
    """(features, fit) of a head on planted labels: the topic's set scores 0, others -1."""
    import numpy as np
    import torch

    from vllm_pudding.router.head import fit_head

    texts, sets = planted_texts(per_topic, seed=0, filler=FILLER_TRAIN)
    x = encode(texts)
    y = torch.full((len(texts), num_sets), -1.0)
    y[torch.arange(len(texts)), torch.tensor(sets)] = 0.0
    truth = np.array(sets)

    def score(head):
        return float((np.array(head.route(x)) == truth).mean())

    return x, fit_head(x, y, "mse", score, hidden=32, epochs=epochs)


def train_planted_router(out: Path, omission_sets, max_tokens: int = 32) -> Path:
    """Fits a text router on planted labels; returns its folder (router.json + head)."""
    from vllm_pudding.router.install import save_router
    from vllm_pudding.router.spec import RouterSpec
    from vllm_pudding.router.text import TextEncoder, default_encoder_dir

    enc = TextEncoder(default_encoder_dir(), max_tokens=max_tokens)
    x, fit = _fit_planted(enc, 20, len(omission_sets), epochs=100)
    spec = RouterSpec(kind="text", omission_sets=[list(s) for s in omission_sets],
                      feature_dim=x.shape[1], head_hidden=32, max_tokens=max_tokens,
                      encoder="encoder", target="planted", objective="mse")
    return save_router(out, spec, fit.head)


def train_planted_hidden_router(out: Path, base: Path, omission_sets, max_tokens: int = 32):
    """Fits a hidden router on the base model's prefix states; returns (folder, head, encoder).

    The head and the HF prefix encoder come back too: the engine's in-worker decisions
    must equal the head applied to HF features of the same prompts.
    """
    from vllm_pudding.router.hidden import PrefixEncoder, common_prefix
    from vllm_pudding.router.install import save_router
    from vllm_pudding.router.spec import RouterSpec

    p = common_prefix(omission_sets)
    enc = PrefixEncoder(base, p, max_tokens=max_tokens, pooling="mean_last")
    x, fit = _fit_planted(enc, 40, len(omission_sets), epochs=150)
    spec = RouterSpec(kind="hidden", omission_sets=[list(s) for s in omission_sets],
                      feature_dim=x.shape[1], head_hidden=32, max_tokens=max_tokens,
                      prefix_layers=p, pooling="mean_last", target="planted", objective="mse")
    return save_router(out, spec, fit.head), fit.head, enc
