"""Log-likelihood scoring of multiple-choice examples THROUGH vLLM, per-request sets.

For every (example, choice) one request: prompt = context tokens + continuation tokens,
`SamplingParams(max_tokens=1, prompt_logprobs=0, extra_args={"pudding_set": s})`; the
choice's score is the sum of the prompt log-probs of the continuation tokens.

Tokenization follows lm-evaluation-harness (`_encode_pair`): trailing spaces of the
context move to the continuation, `whole = encode(context + continuation)`,
`context_enc = encode(context)`, `continuation_enc = whole[len(context_enc):]`; no special
tokens; an empty context becomes the BOS (else EOS, else CLS) token. Over-long inputs lose tokens
from the left of the context (lm-eval's truncation), to `max_model_len - 1` tokens.

Speed-up (`shared_context=True`, the default): an example whose choices share one
context and whose continuations are all one token (MMLU's " A".." D"; BoolQ's " yes" /
" no" with most tokenizers) is scored by ONE request on the context alone, with
`logprob_token_ids` = the choices' tokens: the same log-softmax of the same logits
(vLLM's raw log-probs), without recomputing the context once per choice. Tests check
it against the per-choice requests.

All requests of one call go to ONE `llm.generate` (vLLM batches them, mixing sets).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Sequence

import msgspec

from vllm_pudding.config import SET_ARG
from vllm_pudding.data.mc import MCExample
from vllm_pudding.eval.metrics import predict

SetChoice = Any
"""How a request's set is chosen: a fixed set id, None (send no `pudding_set`: a plain
model, or the pudding model's default set), or a callable per example (router, oracle)."""


class ScoredExample(msgspec.Struct):
    """One example's per-choice scores under one set: what metrics, oracle and router reuse."""

    task: str
    doc_id: str
    gold: int
    set_id: int | None
    """The `pudding_set` its requests carried (None: none sent)."""
    logprobs: list[float]
    """Summed log-prob of each choice's continuation tokens."""
    num_tokens: list[int]
    """Continuation tokens per choice."""
    num_bytes: list[int]
    """Continuation length in UTF-8 bytes per choice (leading space included); not a
    metric's divisor, kept as the stored files have it (it checks re-built examples)."""
    num_chars: list[int]
    """Length in characters of each choice as lm-eval's `doc_to_choice` gives it
    (`MCExample.choice_text`): acc_norm's divisor. Stored files written before it existed
    get it from `vllm_pudding.eval.stored.read_results`."""

    @property
    def mean_logprobs(self) -> list[float]:
        """Mean per-token log-prob per choice (the calibration losses' l, router targets)."""
        return [lp / max(n, 1) for lp, n in zip(self.logprobs, self.num_tokens)]

    @property
    def pred(self) -> int:
        return predict(self.logprobs)

    @property
    def pred_norm(self) -> int:
        return predict(self.logprobs, self.num_chars)

    @property
    def correct(self) -> bool:
        return self.pred == self.gold

    @property
    def correct_norm(self) -> bool:
        return self.pred_norm == self.gold


class ScoreStats(msgspec.Struct):
    requests: int = 0
    prompt_tokens: int = 0
    seconds: float = 0.0


def set_chooser(choice: Any) -> Callable[[MCExample], int | None]:
    """A callable example -> set id from an int, None, a callable, or a mapping keyed by
    (task, doc_id) (per-example choice: oracle, router labels)."""
    if choice is None or isinstance(choice, int):
        return lambda ex: choice
    if isinstance(choice, Mapping):
        table = dict(choice)
        return lambda ex: table[(ex.task, ex.doc_id)]
    if callable(choice):
        return choice
    raise TypeError(f"set choice must be int, None, mapping or callable, got {choice!r}")


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _prefix_token(tokenizer) -> int:
    for name in ("bos_token_id", "eos_token_id", "cls_token_id"):
        tid = getattr(tokenizer, name, None)
        if tid is not None:
            return tid
    raise ValueError("tokenizer has no BOS / EOS / CLS token: cannot score an empty context")


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's context / continuation token split (see the module docstring)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:
        return [_prefix_token(tokenizer)], _encode(tokenizer, continuation)
    whole = _encode(tokenizer, context + continuation)
    ctx = _encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def _truncate(ctx: list[int], cont: list[int], max_len: int | None) -> tuple[list[int], int]:
    """(prompt tokens, index of the first continuation token) within max_len tokens."""
    ids = ctx + cont
    if max_len is not None and len(ids) > max_len:
        ids = ids[-max_len:]
    start = len(ids) - len(cont)
    if start < 1:
        raise ValueError(f"continuation of {len(cont)} tokens does not fit {max_len} tokens")
    return ids, start


class _Plan(msgspec.Struct):
    example: int
    choices: list[int]        # choice indices this request scores
    start: int = 0            # prompt-logprob path: first continuation position
    token_ids: list[int] = []  # shared-context path: one token per choice


def score_examples(llm, tokenizer, examples: Sequence[MCExample], sets: Any = None, *,
                   shared_context: bool = True, max_model_len: int | None = None,
                   use_tqdm: bool = False, stats: ScoreStats | None = None,
                   ) -> list[ScoredExample]:
    """Scores every choice of every example through `llm` in one `generate` call.

    sets: int, None, mapping (task, doc_id) -> id, or callable example -> id (`set_chooser`).
    `max_model_len` defaults to the engine's. Returns one ScoredExample per example, in order.
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    choose = set_chooser(sets)
    if max_model_len is None:
        max_model_len = llm.llm_engine.vllm_config.model_config.max_model_len
    max_len = max_model_len - 1  # room for the one generated token

    prompts, params, plans = [], [], []
    set_ids: list[int | None] = []
    num_tokens: list[list[int]] = []
    for i, ex in enumerate(examples):
        sid = choose(ex)
        set_ids.append(sid)
        extra = None if sid is None else {SET_ARG: sid}
        pairs = [encode_pair(tokenizer, *ex.pair(c)) for c in range(ex.num_choices)]
        num_tokens.append([len(cont) for _, cont in pairs])
        if (shared_context and len(ex.contexts) == 1 and ex.num_choices > 1
                and all(len(cont) == 1 for _, cont in pairs)
                and all(ctx == pairs[0][0] for ctx, _ in pairs)):
            ctx = pairs[0][0][-max_len:]
            tids = [cont[0] for _, cont in pairs]
            prompts.append(TokensPrompt(prompt_token_ids=ctx))
            params.append(SamplingParams(max_tokens=1, temperature=0.0, detokenize=False,
                                         logprob_token_ids=sorted(set(tids)),
                                         extra_args=extra))
            plans.append(_Plan(i, list(range(ex.num_choices)), token_ids=tids))
            continue
        for c, (ctx, cont) in enumerate(pairs):
            ids, start = _truncate(ctx, cont, max_len)
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            params.append(SamplingParams(max_tokens=1, temperature=0.0, detokenize=False,
                                         prompt_logprobs=0, flat_logprobs=True,
                                         extra_args=extra))
            plans.append(_Plan(i, [c], start=start))

    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=use_tqdm) if prompts else []
    if stats is not None:
        stats.requests += len(prompts)
        stats.prompt_tokens += sum(len(p["prompt_token_ids"]) for p in prompts)
        stats.seconds += time.perf_counter() - t0

    logprobs = [[0.0] * ex.num_choices for ex in examples]
    for plan, prompt, out in zip(plans, prompts, outputs):
        if plan.token_ids:
            step = out.outputs[0].logprobs[0]
            for c, tid in zip(plan.choices, plan.token_ids):
                logprobs[plan.example][c] = float(step[tid].logprob)
        else:
            ids = prompt["prompt_token_ids"]
            plp = out.prompt_logprobs
            logprobs[plan.example][plan.choices[0]] = float(
                sum(plp[p][ids[p]].logprob for p in range(plan.start, len(ids))))

    return [ScoredExample(task=ex.task, doc_id=ex.doc_id, gold=ex.gold, set_id=set_ids[i],
                          logprobs=logprobs[i], num_tokens=num_tokens[i],
                          num_bytes=[len(ex.pair(c)[1].encode("utf-8"))
                                     for c in range(ex.num_choices)],
                          num_chars=[len(ex.choice_text(c)) for c in range(ex.num_choices)])
            for i, ex in enumerate(examples)]
