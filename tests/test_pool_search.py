"""Pool search: fast scoring == direct HF computation, greedy finds a planted answer,
the pool rule (dedup, fill, rank) and provenance on hand-made records."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch

from tiny_models import ARCHS, drop_layers
from vllm_pudding.data.mc import MCExample
from vllm_pudding.search.greedy import GreedyRun, TrialCache, evaluate, greedy_task, planned_trials
from vllm_pudding.search.pool import dropped_sets, greedy_sets, runner_ups, select_pool
from vllm_pudding.search.scoring import (LayerModel, TaskScorer, encode_examples, encode_pair,
                                         losses, pack, score_examples)

WORDS = ("the cat dog sat on mat red blue house tree river water fire stone green small big "
         "old new run walk eat drink book table chair window door light dark sun moon star "
         "sky day night time").split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def synthetic_examples(n: int, seed: int = 0) -> list[MCExample]:
    """Every shape the packer must handle: shared context with 4 or 2 choices
    (continuations sharing first words, a duplicated choice, one-word answers) and
    WinoGrande-style per-choice contexts with one shared continuation."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # ARC/HellaSwag-like
            stem = _text(rng, 2)
            conts = [" " + stem + " " + _text(rng, rng.randint(1, 4)) for _ in range(3)]
            conts.append(conts[1])  # identical choices
            out.append(MCExample("t", str(i), [f"Question: {_text(rng, rng.randint(3, 9))}\nAnswer:"],
                                 conts, rng.randrange(4)))
        elif kind == 1:  # BoolQ-like: long context, one-word answers
            out.append(MCExample("t", str(i), [_text(rng, rng.randint(15, 30)) + "\nAnswer:"],
                                 [" yes", " no"], rng.randrange(2)))
        elif kind == 2:  # WinoGrande-like
            pre = _text(rng, rng.randint(3, 6))
            out.append(MCExample("t", str(i), [pre + " " + rng.choice(WORDS) for _ in range(2)],
                                 [" " + _text(rng, rng.randint(1, 5))], rng.randrange(2)))
        else:  # PIQA-like, context with a trailing space (moves to the continuation)
            out.append(MCExample("t", str(i), [_text(rng, 4) + " "],
                                 [_text(rng, rng.randint(2, 6)) for _ in range(2)], 1))
    return out


def _load_tiny(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    return model, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def tiny(tiny_base):
    return _load_tiny(tiny_base)


@pytest.fixture(scope="module", params=ARCHS)
def tiny_arch(request, tiny_models):
    """(model, tokenizer) of each architecture's tiny model (Llama: `tiny`)."""
    if request.param == "llama":
        return request.getfixturevalue("tiny")
    return _load_tiny(tiny_models(request.param).base)


def direct_logprobs(model, tok, examples, removed) -> np.ndarray:
    """Reference: a plain HF forward of context+continuation per choice, layers removed
    (from a copy: the module's model stays whole)."""
    model = drop_layers(copy.deepcopy(model), removed)
    C = max(e.num_choices for e in examples)
    out = np.full((len(examples), C), np.nan)
    with torch.no_grad():
        for e, ex in enumerate(examples):
            for c in range(ex.num_choices):
                ctx, cont = encode_pair(tok, *ex.pair(c))
                ids = torch.tensor([ctx + cont])
                logp = torch.log_softmax(model(ids, use_cache=False).logits[0].double(), -1)
                tgt = torch.arange(len(ctx), len(ctx) + len(cont))
                out[e, c] = logp[tgt - 1, ids[0, tgt]].mean().item()
    return out


def test_encode_pair_lm_eval_rules(tiny):
    _, tok = tiny
    ctx, cont = encode_pair(tok, "the cat ", "sat")
    assert tok.decode(ctx) == "the cat" and tok.decode(cont) == "sat"
    assert ctx + cont == tok("the cat sat", add_special_tokens=False).input_ids


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("removed", [(), (2,), (0, 3, 5), (1, 2, 3, 4)])
def test_fast_scoring_equals_direct(tiny_arch, removed, compiled):
    """Both layer implementations (HF layers; fused math under torch.compile, ~20 s to
    compile once) equal a plain HF forward per choice, fp32, per architecture."""
    model, tok = tiny_arch
    examples = synthetic_examples(14)
    direct = direct_logprobs(model, tok, examples, removed)
    lm = LayerModel(model)
    # small rows and chunks: several examples per row, several rows per chunk, many chunks
    fast = score_examples(lm, tok, examples, removed, compiled=compiled, row_tokens=48,
                          chunk_tokens=100)
    assert np.array_equal(np.isnan(fast), np.isnan(direct))
    np.testing.assert_allclose(fast, direct, rtol=1e-5, atol=1e-5)  # |l| ~ 10 here
    gold = np.array([e.gold for e in examples])
    for name, v in losses(direct, gold).items():
        assert losses(fast, gold)[name] == pytest.approx(v, abs=1e-4)


def test_gemma3_runs_hf_layers_with_its_masks(tiny_models):
    """Gemma 3 has no fused layer (its own norms, q/k norms, per-type rotary), so even a
    compiled scorer runs HF's layers; the tiny model's window (16) is shorter than the
    longest synthetic context, so the sliding mask differs from the full one."""
    model, _ = _load_tiny(tiny_models("gemma3").base)
    lm = LayerModel(model)
    assert not lm.fusable and lm.window == 16
    pos = torch.arange(40)[None]
    masks = lm.masks(None, pos)
    assert masks["full_attention"] is None
    sliding = masks["sliding_attention"][0, 0]
    assert sliding[39, 24] and not sliding[39, 23] and not sliding[5, 6]
    pe = lm.position_embeddings(torch.zeros(()), pos)
    assert not torch.equal(pe["full_attention"][0], pe["sliding_attention"][0])


def test_search_refuses_unknown_layers(tiny):
    """A decoder layer the search does not know is refused by name, not run wrong."""
    model, _ = tiny

    class OtherDecoderLayer(torch.nn.Module):
        pass

    layers = model.model.layers
    model.model.layers = torch.nn.ModuleList([OtherDecoderLayer()])
    try:
        with pytest.raises(ValueError, match="not OtherDecoderLayer"):
            LayerModel(model)
    finally:
        model.model.layers = layers


def test_losses_definition():
    lp = np.array([[-1.0, -2.0, -3.0, np.nan], [-0.5, -0.25, -4.0, -1.0]])
    gold = np.array([0, 1])
    out = losses(lp, gold)
    assert out["likelihood"] == pytest.approx(1.0 + 0.25)
    # (C-1) l_correct - sum wrong, C = 3 then 4: (2*-1 - (-2-3)) + (3*-0.25 - (-0.5-4-1))
    assert out["margin"] == pytest.approx(-((-2 + 5) + (-0.75 + 5.5)))
    assert out["acc"] == 1.0


def test_packing_shares_context(tiny):
    _, tok = tiny
    ex = MCExample("t", "0", ["a b c d e f g h"], [" yes", " no"], 0)
    packed = pack(encode_examples(tok, [ex]))
    n_ctx = len(tok("a b c d e f g h", add_special_tokens=False).input_ids)
    assert packed.tokens == n_ctx  # one-token answers add no input tokens
    assert packed.score_index.tolist() == [n_ctx - 1, n_ctx - 1]


def test_prefix_states_reuse_is_exact(tiny):
    model, tok = tiny
    scorer = TaskScorer(LayerModel(model), pack(encode_examples(tok, synthetic_examples(8)),
                                                row_tokens=64, chunk_tokens=128))
    kept_a, kept_b = [0, 1, 2, 3, 4, 5], [0, 1, 3, 4, 5]
    sa = scorer.prefix_states(kept_a, 4)
    sb = scorer.prefix_states(kept_b, 3, base=(kept_a, sa))
    fresh = scorer.prefix_states(kept_b, 3)
    for x, y in zip(sb, fresh):
        for cx, cy in zip(x, y):
            torch.testing.assert_close(cx, cy, rtol=0, atol=0)
    assert sb[1] is sa[1] and sb[2] is sa[2]


def _planted(tiny_base, tmp_path, harmless, num_layers=8):
    """A tiny Llama whose `harmless` layers are exact identities (o_proj and down_proj
    zero), and examples whose gold continuation is the dense model's greedy output."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tiny_models import write_tiny_llama

    path = write_tiny_llama(tmp_path / "planted", num_layers=num_layers, seed=3)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    tok = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        for i in harmless:
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    rng = random.Random(1)
    examples = []
    with torch.no_grad():
        for i in range(12):
            ctx = _text(rng, 6)
            ids = tok(ctx, add_special_tokens=False, return_tensors="pt").input_ids
            gen = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
            good = tok.decode(gen[0, ids.shape[1]:])
            conts = [" " + good] + [" " + _text(rng, 3) for _ in range(3)]
            examples.append(MCExample("t", str(i), [ctx], conts, 0))
    return model, tok, examples


def test_greedy_finds_planted_harmless_layers(tiny_base, tmp_path):
    # layers 0 and 7 (first and last) are harmless too, but may never be removed
    harmless = [0, 2, 5, 7]
    model, tok, examples = _planted(tiny_base, tmp_path, harmless)
    scorer = TaskScorer(LayerModel(model), pack(encode_examples(tok, examples),
                                                row_tokens=64, chunk_tokens=128))
    calls = []
    runs, cache = greedy_task(scorer, "t", 8, k=3, on_trial=lambda c, n: calls.append(c))
    dense = cache[frozenset()]
    for name in ("likelihood", "margin"):
        r = runs[name]
        assert r.order[:2] == [2, 5], (name, r.rankings)
        assert r.step_losses[:2] == [dense[name], dense[name]]  # exactly harmless
        assert r.step_losses[2] > dense[name]
        assert [len(x) for x in r.rankings] == [6, 5, 4]
        assert 0 not in r.order and 7 not in r.order
        assert r.rankings[0][0] == [2, dense[name]] and r.rankings[0][1] == [5, dense[name]]
    # runs that agree share all trials: 6 + 5 + 4, each computed once
    assert calls == [True] * planned_trials(8, 3)
    # a run of one loss reuses every trial the other loss's run already computed
    calls.clear()
    runs2, _ = greedy_task(scorer, "t", 8, k=3, loss_names=("margin",), cache=cache,
                           on_trial=lambda c, n: calls.append(c))
    assert calls == [False] * planned_trials(8, 3)
    assert runs2["margin"].to_json() == runs["margin"].to_json()


def test_greedy_prefix_path_equals_from_scratch(tiny):
    model, tok = tiny
    scorer = TaskScorer(LayerModel(model), pack(encode_examples(tok, synthetic_examples(8)),
                                                row_tokens=64, chunk_tokens=128))
    runs, cache = greedy_task(scorer, "t", 6, k=3)
    for r in runs.values():
        for s in range(3):
            base = r.order[:s]
            for layer, value in r.rankings[s]:
                fresh = evaluate(scorer, set(base) | {layer}, 6, TrialCache())
                assert value == pytest.approx(fresh[r.loss], abs=1e-9)
            assert [x[1] for x in r.rankings[s]] == sorted(x[1] for x in r.rankings[s])
            assert r.order[s] == r.rankings[s][0][0]


def test_evaluate_from_dense_prefix_is_exact(tiny):
    model, tok = tiny
    scorer = TaskScorer(LayerModel(model), pack(encode_examples(tok, synthetic_examples(8)),
                                                row_tokens=64, chunk_tokens=128))
    dense = list(range(6))
    states = scorer.prefix_states(dense, 3)
    for s in ([3, 4], [1, 2], [4]):
        via_prefix = evaluate(scorer, s, 6, TrialCache(), bases=[(dense, states)])
        assert via_prefix == evaluate(scorer, s, 6, TrialCache())


def test_greedy_resume(tiny):
    model, tok = tiny
    scorer = TaskScorer(LayerModel(model), pack(encode_examples(tok, synthetic_examples(8)),
                                                row_tokens=64, chunk_tokens=128))
    full, _ = greedy_task(scorer, "t", 6, k=3)
    part, cache = greedy_task(scorer, "t", 6, k=1)
    saved = json.loads(json.dumps({"runs": {k: r.to_json() for k, r in part.items()},
                                   "cache": cache.to_json()}))
    calls = []
    resumed, _ = greedy_task(scorer, "t", 6, k=3, cache=TrialCache.from_json(saved["cache"]),
                             runs={k: GreedyRun.from_json(v) for k, v in saved["runs"].items()},
                             on_trial=lambda c, n: calls.append(c))
    assert {k: r.to_json() for k, r in resumed.items()} == {k: r.to_json() for k, r in full.items()}
    assert len(calls) <= 2 * (3 + 2)  # only steps 2 and 3 tried again


# ---------------------------------------------------------------------------- pool rule

def _run(task, loss, order, ranking_last=None, k=None):
    k = k or len(order)
    steps = [float(10 * (s + 1)) for s in range(len(order))]
    rankings = [[[order[s], steps[s]], [99, steps[s] + 1]] for s in range(len(order))]
    if ranking_last is not None:
        rankings[k - 1] = [[order[k - 1], steps[k - 1]]] + [[c, steps[k - 1] + i + 1]
                                                             for i, c in enumerate(ranking_last)]
    return GreedyRun(task, loss, list(order), steps, rankings)


def test_pool_dedup_keeps_every_provenance():
    runs = [_run("a", "likelihood", [3, 1, 2]), _run("a", "margin", [1, 2, 3]),
            _run("b", "likelihood", [4, 5, 6])]
    found = greedy_sets(runs, 3)
    assert list(found) == [(1, 2, 3), (4, 5, 6)]
    prov = found[(1, 2, 3)]
    assert [(p["task"], p["loss"], p["order"]) for p in prov] == \
        [("a", "likelihood", [3, 1, 2]), ("a", "margin", [1, 2, 3])]
    assert prov[0]["step_losses"] == [10.0, 20.0, 30.0]


def test_pool_fill_from_runner_ups_round_robin():
    runs = [_run("a", "likelihood", [1, 2, 3], ranking_last=[4, 5]),
            _run("a", "margin", [1, 2, 3], ranking_last=[4, 6]),
            _run("b", "likelihood", [7, 8, 9], ranking_last=[10, 11])]
    pool = select_pool(runs, 3, size=5)
    assert [p["layers"] for p in pool] == [[1, 2, 3], [7, 8, 9], [1, 2, 4], [7, 8, 10],
                                           [1, 2, 5]]
    assert len(pool[0]["provenance"]) == 2
    fill = pool[2]["provenance"][0]
    assert fill["source"] == "runner_up" and fill["rank"] == 2 and fill["task"] == "a"
    assert fill["order"] == [1, 2, 4] and fill["step_losses"] == [10.0, 20.0, 31.0]
    # (1, 2, 4) came first from a/likelihood; a/margin's 2nd-best is the same set
    assert [s for s, _ in runner_ups(runs, 3)][:3] == [(1, 2, 4), (1, 2, 4), (7, 8, 10)]


def test_pool_skips_sets_outside_the_sanity_bound():
    """A greedy result whose free generation broke never enters the pool; the fill takes
    the next admissible runner-up instead."""
    runs = [_run("a", "likelihood", [1, 2, 3], ranking_last=[4, 5]),
            _run("a", "margin", [1, 2, 3], ranking_last=[4, 6]),
            _run("b", "likelihood", [7, 8, 9], ranking_last=[10, 11])]
    broken = {(7, 8, 9), (1, 2, 4)}
    pool = select_pool(runs, 3, size=4, admissible=lambda s: s not in broken)
    assert [p["layers"] for p in pool] == [[1, 2, 3], [7, 8, 10], [1, 2, 5], [1, 2, 6]]
    assert [7, 8, 9] in dropped_sets(runs, 3, pool)


def test_pool_rank_rule_keeps_best_mean_rank():
    runs = [_run(t, l, [i, i + 10]) for i, (t, l) in enumerate(
        [(t, l) for t in ("a", "b") for l in ("likelihood", "margin")])]
    # 4 distinct sets, keep 2; score: set (0,10) best everywhere, (3,13) 2nd on task b only
    quality = {(0, 10): [1, 1], (1, 11): [2, 4], (2, 12): [3, 3], (3, 13): [4, 2]}

    def score(task, s):
        q = quality[tuple(s)][0 if task == "a" else 1]
        return {"likelihood": q, "margin": q}

    pool = select_pool(runs, 2, size=2, score=score)
    assert [p["layers"] for p in pool] == [[0, 10], [1, 11]]  # (1,11) and (2,12) and (3,13) tie
    assert pool[0]["mean_rank"] == 1.0 and pool[1]["mean_rank"] == 3.0
    with pytest.raises(ValueError):
        select_pool(runs, 2, size=2)


def test_pool_prefix_k_uses_first_removals():
    runs = [_run("a", "likelihood", [5, 1, 9, 2]), _run("a", "margin", [1, 5, 3, 4])]
    pool = select_pool(runs, 2, size=1)
    assert pool == [{"layers": [1, 5], "provenance": greedy_sets(runs, 2)[(1, 5)]}]


def test_search_end_to_end_and_resume(tiny_base, tmp_path):
    """The driver on the tiny model: two tasks, both losses, k=3 and prefix k=2, pool of 4;
    a second call resumes from the checkpoints without computing any trial."""
    from vllm_pudding.search.run import search

    ex = {"ta": synthetic_examples(6, seed=1), "tb": synthetic_examples(6, seed=2)}
    kw = dict(model_dir=tiny_base, tasks=["ta", "tb"], k=3, n_examples=6, prefix_k=[2],
              pool_size=4, dtype="float32", workers=1, row_tokens=64, chunk_tokens=128, compiled=False,
              cache_root=tmp_path / "ckpt", examples=ex)
    doc = search(out=tmp_path / "pool.json", **kw)
    saved = json.loads((tmp_path / "pool.json").read_text())
    assert saved["k"] == 3 and len(saved["runs"]) == 4
    assert [(r["task"], r["loss"]) for r in saved["runs"]] == \
        [("ta", "likelihood"), ("ta", "margin"), ("tb", "likelihood"), ("tb", "margin")]
    for pool_k, sets in ((3, saved["sets"]), (2, saved["prefix_pools"]["2"]["sets"])):
        assert len(sets) == 4 and len({tuple(s["layers"]) for s in sets}) == 4
        for s in sets:
            assert len(s["layers"]) == pool_k and 0 not in s["layers"] and 5 not in s["layers"]
            assert set(s["scores"]) == {"ta", "tb"}
            for p in s["provenance"]:
                assert sorted(p["order"]) == s["layers"] and len(p["step_losses"]) == pool_k
                run = next(r for r in saved["runs"] if (r["task"], r["loss"]) == (p["task"], p["loss"]))
                if p["source"] == "greedy":
                    assert p["order"] == run["order"][:pool_k]
                    assert s["scores"][p["task"]][p["loss"]] == pytest.approx(p["step_losses"][-1], abs=1e-4)
    again = search(out=tmp_path / "pool2.json", **kw)
    assert again["sets"] == doc["sets"]
    assert again["timing"]["trials_computed"] == doc["timing"]["trials_computed"]
