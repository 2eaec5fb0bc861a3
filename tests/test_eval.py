"""Evaluation: metrics on hand-made scores, tokenization, and vLLM scoring vs HF transformers.

The vLLM checks use the shared tiny PuDDing engine (`pudding_llm`, fp32, MiniLM
tokenizer) on a few real examples; the reference is an HF Llama with the set's layers
deleted, scoring the same continuation tokens with a plain forward pass.
"""

import json
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import TINY_SETS
from tiny_models import drop_layers, hf_without_layers
from vllm_pudding.data.mc import MCExample
from vllm_pudding.eval import (Estimate, RunResult, ScoredExample, accuracy, encode_pair,
                               evaluate_run, markdown_table, mean_of, normalized_scores,
                               oracle_rows, predict, score_examples, task_result, wilson)

# ---------------------------------------------------------------- metrics (no engine)


def _scored(logprobs, num_chars, gold, task="arc_challenge", doc_id="0"):
    return ScoredExample(task=task, doc_id=doc_id, gold=gold, set_id=None, logprobs=logprobs,
                         num_tokens=[1] * len(logprobs),
                         num_bytes=[n + 1 for n in num_chars], num_chars=num_chars)


def test_acc_and_acc_norm_on_hand_made_logprobs():
    # acc picks the largest sum (-2.0, choice 1); acc_norm the largest per character:
    # -4/20 = -0.2 (choice 0) beats -2/5 = -0.4 and -3/6 = -0.5.
    s = _scored([-4.0, -2.0, -3.0], [20, 5, 6], gold=0)
    assert s.pred == 1 and s.pred_norm == 0
    assert not s.correct and s.correct_norm
    assert predict([-1.0, -1.0, -2.0]) == 0  # ties: first index, like numpy
    res = task_result("arc_challenge", [s, _scored([-1.0, -5.0, -9.0], [3, 3, 3], gold=0),
                                        _scored([-3.0, -1.0, -2.0], [3, 3, 3], gold=2)])
    assert res.metric == "acc_norm"
    assert res.acc.value == pytest.approx(1 / 3) and res.acc_norm.value == pytest.approx(2 / 3)
    assert res.value is res.acc_norm and res.acc.n == 3
    assert task_result("piqa", [s]).value.value == 0.0  # PIQA reports acc


def test_acc_norm_divides_by_choice_characters_not_continuation_bytes():
    """lm-eval's divisor is len(choice): characters, no leading space. Here the three
    candidate divisors (chars, bytes, bytes with the space) each pick a different choice."""
    ex = MCExample(task="arc_challenge", doc_id="0", contexts=["Question: q\nAnswer:"],
                   continuations=[" 10 \u00b0C", " 5 m", " ab"], gold=1)
    assert [ex.choice_text(c) for c in range(3)] == ["10 \u00b0C", "5 m", "ab"]
    chars = [len(ex.choice_text(c)) for c in range(3)]               # [5, 3, 2]
    spaced_bytes = [len(ex.pair(c)[1].encode()) for c in range(3)]    # [7, 4, 3]
    lps = [-6.0, -3.3, -2.3]
    s = ScoredExample(task="arc_challenge", doc_id="0", gold=1, set_id=None, logprobs=lps,
                      num_tokens=[1] * 3, num_bytes=spaced_bytes, num_chars=chars)
    assert normalized_scores(lps, chars).tolist() == pytest.approx([-1.2, -1.1, -1.15])
    assert s.pred == 2 and s.pred_norm == 1 and s.correct_norm
    assert predict(lps, [6, 3, 2]) == 0             # UTF-8 bytes of the choice
    assert predict(lps, spaced_bytes) == 2          # the old divisor (bytes, space included)
    # WinoGrande's choices are its partial contexts (lm-eval's doc_to_choice).
    wg = MCExample(task="winogrande", doc_id="0", contexts=["The cup fell because Ann",
                                                           "The cup fell because the table"],
                   continuations=[" was wobbly."], gold=1)
    assert [len(wg.choice_text(c)) for c in range(2)] == [24, 30]


def test_mean_logprobs():
    s = ScoredExample(task="t", doc_id="0", gold=0, set_id=3, logprobs=[-6.0, -2.0],
                      num_tokens=[3, 1], num_bytes=[9, 3], num_chars=[8, 2])
    assert s.mean_logprobs == [-2.0, -2.0]


def test_wilson_interval():
    e = wilson(50, 100)
    assert e.value == 0.5 and e.n == 100
    assert e.low == pytest.approx(0.4038, abs=1e-4) and e.high == pytest.approx(0.5962, abs=1e-4)
    e = wilson(0, 20)
    assert e.low == 0.0 and e.high == pytest.approx(0.1611, abs=1e-4)
    assert accuracy([True, False, True, True]) == wilson(3, 4)
    assert e.fmt() == "0.0 [0.0, 16.1]"


def test_mean_of_normal_approximation():
    a, b = wilson(60, 100), wilson(80, 400)
    m = mean_of([a, b])
    assert m.value == pytest.approx(0.4)
    half = 1.959964 * math.sqrt(0.6 * 0.4 / 100 + 0.2 * 0.8 / 400) / 2
    assert m.high - m.value == pytest.approx(half, rel=1e-5) and m.n == 500


def test_oracle_rows_and_table():
    def run(label, flags):
        exs = [_scored([0.0, -1.0] if ok else [-1.0, 0.0], [1, 1], gold=0, task="piqa",
                       doc_id=str(i)) for i, ok in enumerate(flags)]
        return RunResult(label=label, layers=[1], tasks={"piqa": task_result("piqa", exs)},
                         examples={"piqa": exs})

    runs = [run("dense", [1, 1, 1, 1]), run("set0", [1, 0, 0, 1]), run("set1", [0, 1, 1, 1]),
            run("set2", [1, 1, 0, 0]), run("set3", [1, 1, 0, 0])]
    task_row, example_row = oracle_rows(runs)
    assert task_row.tasks["piqa"].picked == "set1"  # dense is no candidate
    assert task_row.tasks["piqa"].acc.value == 0.75
    assert oracle_rows(runs[3:])[0].tasks["piqa"].picked == "set2"  # ties: the first
    assert example_row.tasks["piqa"].acc.value == 1.0
    table = markdown_table(runs + [task_row, example_row])
    assert "piqa (acc, n=4)" in table and "75.0 [" in table and "(set1)" in table


# ---------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_base))


def test_encode_pair_lm_eval_split(tokenizer):
    ctx, cont = encode_pair(tokenizer, "Question: is the sky blue?\nAnswer:", " yes it is")
    whole = tokenizer("Question: is the sky blue?\nAnswer: yes it is",
                      add_special_tokens=False)["input_ids"]
    assert ctx + cont == whole and len(cont) == 3
    # Trailing context spaces move to the continuation; no special tokens anywhere.
    ctx2, cont2 = encode_pair(tokenizer, "Question: is the sky blue?\nAnswer: ", "yes it is")
    assert (ctx2, cont2) == (ctx, cont)
    assert tokenizer.cls_token_id not in ctx + cont
    # Empty context: the BOS (else EOS, else CLS: this BERT tokenizer) token stands in.
    ctx3, cont3 = encode_pair(tokenizer, "", "yes")
    assert ctx3 == [tokenizer.cls_token_id] and len(cont3) == 1


# ---------------------------------------------------------------- vLLM vs HF reference

def _examples():
    from vllm_pudding.data.tasks import validation_examples

    exs = (validation_examples("arc_easy", n=2, seed=None)
           + validation_examples("winogrande", n=2, seed=None)
           + validation_examples("mmlu", n=2, seed=None)
           + validation_examples("hellaswag", n=1, seed=None))
    # MMLU's " A".." D" are single tokens: scored by the shared-context path.
    return exs


def hf_scores(base, omitted, tokenizer, examples):
    """Summed continuation log-probs per example and choice, HF fp32, layers deleted."""
    model = hf_without_layers(base, omitted)
    out = []
    with torch.no_grad():
        for ex in examples:
            row = []
            for c in range(ex.num_choices):
                ctx, cont = encode_pair(tokenizer, *ex.pair(c))
                ids = torch.tensor([ctx + cont])
                lp = torch.log_softmax(model(ids).logits[0].float(), -1)
                row.append(sum(float(lp[len(ctx) + j - 1, t]) for j, t in enumerate(cont)))
            out.append(row)
    return out


@pytest.fixture(scope="module")
def examples():
    return _examples()


@pytest.mark.parametrize("set_id", range(len(TINY_SETS)))
def test_vllm_scores_match_hf(pudding_llm, tiny_base, tokenizer, examples, set_id):
    ref = hf_scores(tiny_base, set(TINY_SETS[set_id]), tokenizer, examples)
    per_choice = score_examples(pudding_llm, tokenizer, examples, set_id, shared_context=False)
    shared = score_examples(pudding_llm, tokenizer, examples, set_id)
    for ex, r, a, b in zip(examples, ref, per_choice, shared):
        assert a.set_id == set_id and a.gold == ex.gold and a.doc_id == ex.doc_id
        assert len(a.logprobs) == ex.num_choices
        tol = 2e-3  # fp32 both sides; measured <= 1e-4
        assert a.logprobs == pytest.approx(r, abs=tol), ex.task
        assert b.logprobs == pytest.approx(r, abs=tol), ex.task
        assert a.num_bytes == [len(ex.pair(c)[1].encode()) for c in range(ex.num_choices)]
        assert a.num_chars == [len(ex.choice_text(c)) for c in range(ex.num_choices)]
    # Sets really differ (the tiny model's depth matters).
    assert per_choice[0].logprobs != pytest.approx(
        score_examples(pudding_llm, tokenizer, examples[:1], (set_id + 1) % len(TINY_SETS),
                       shared_context=False)[0].logprobs, abs=1e-3)


def test_hf_engine_cli_scores_as_the_hf_reference(tiny_base, tokenizer, tmp_path):
    """`--hf`: HF transformers answers the scorer's requests (per-choice and shared-context
    paths) with the dense model's own log-probs; no vLLM engine starts."""
    from vllm_pudding.data.tasks import validation_examples
    from vllm_pudding.eval.__main__ import main

    out = tmp_path / "hf.json"
    assert main(["--model", str(tiny_base), "--hf", "--tasks", "arc_easy,mmlu", "--n", "2",
                 "--dtype", "float32", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["engine"] == "transformers"
    scored = res["examples"]["dense"]["arc_easy"] + res["examples"]["dense"]["mmlu"]
    exs = validation_examples("arc_easy", n=2) + validation_examples("mmlu", n=2)
    assert [(s["task"], s["doc_id"]) for s in scored] == [(e.task, e.doc_id) for e in exs]
    ref = hf_scores(tiny_base, set(), tokenizer, exs)
    assert [s["logprobs"] for s in scored] == [pytest.approx(r, abs=1e-4) for r in ref]


def test_per_example_sets_in_one_batch(pudding_llm, tokenizer, examples):
    """A mapping (task, doc_id) -> set mixes sets in one generate; each example scores as
    it does alone under its set."""
    mapping = {(ex.task, ex.doc_id): i % len(TINY_SETS) for i, ex in enumerate(examples)}
    mixed = score_examples(pudding_llm, tokenizer, examples, mapping)
    for i, (ex, m) in enumerate(zip(examples, mixed)):
        assert m.set_id == i % len(TINY_SETS)
        alone = score_examples(pudding_llm, tokenizer, [ex], m.set_id)[0]
        assert m.logprobs == pytest.approx(alone.logprobs, abs=2e-3 * max(m.num_tokens) + 1e-3)
    via_callable = score_examples(pudding_llm, tokenizer, examples[:2], lambda ex: 2)
    assert [s.set_id for s in via_callable] == [2, 2]


def test_truncation_keeps_continuation(pudding_llm, tokenizer):
    long_ctx = "Question: " + "word " * 700 + "?\nAnswer:"
    ex = MCExample(task="piqa", doc_id="x", contexts=[long_ctx],
                   continuations=[" yes it is", " no"], gold=0)
    (s,) = score_examples(pudding_llm, tokenizer, [ex], 0, shared_context=False)
    assert s.num_tokens == [3, 1] and all(math.isfinite(v) for v in s.logprobs)


def test_evaluate_run(pudding_llm, tokenizer, examples):
    data = {"winogrande": [e for e in examples if e.task == "winogrande"],
            "mmlu": [e for e in examples if e.task == "mmlu"]}
    logs = []
    run = evaluate_run(pudding_llm, tokenizer, "set1", data, 1, TINY_SETS[1], log=logs.append)
    assert set(run.tasks) == {"winogrande", "mmlu"} and len(logs) == 2
    assert run.tasks["mmlu"].acc.n == 2 and run.tasks["mmlu"].requests == 2  # shared context
    assert run.tasks["winogrande"].requests == 4
    assert isinstance(run.tasks["winogrande"].value, Estimate)
    assert [s.set_id for s in run.examples["mmlu"]] == [1, 1]


def test_cli_pool_and_extra_sets(tiny_pudding, tmp_path):
    """One engine: the tiny pool plus a labelled extra set (temporary pudding dir), run as
    a user runs the CLI (a child Python; its engine in-process, which starts in seconds)."""
    import sys

    from server_utils import run_cli

    out = tmp_path / "res.json"
    text = run_cli([sys.executable, "-m", "vllm_pudding.eval", "--model", str(tiny_pudding),
                    "--tasks", "winogrande,mmlu", "--n", "3", "--sets", "0,2",
                    "--extra-sets", json.dumps({"static": [1, 2]}), "--dtype", "float32",
                    "--max-model-len", "512", "--enforce-eager", "--out", str(out)],
                   tmp_path / "eval.log", {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert "| set0 | [0, 1] |" in text and "| static | [1, 2] |" in text
    assert "oracle-task" in text and "winogrande (acc, n=3)" in text
    res = json.loads(out.read_text())
    assert set(res["runs"]) == {"set0", "set2", "static", "oracle-task", "oracle-example"}
    ex = res["examples"]["static"]["mmlu"][0]
    assert ex["set_id"] == len(TINY_SETS) and len(ex["logprobs"]) == 4
    assert res["runs"]["set2"]["tasks"]["mmlu"]["acc"]["n"] == 3


# ---------------------------------------------------------------- static baselines (HF)

@pytest.fixture(scope="module")
def planted(tiny_base, tmp_path_factory):
    """The tiny base with blocks 2 and 4 made exact identities (o_proj, down_proj = 0)."""
    import shutil

    from safetensors.torch import load_file, save_file

    out = tmp_path_factory.mktemp("planted") / "base"
    shutil.copytree(tiny_base, out)
    state = load_file(out / "model.safetensors")
    for i in (2, 4):
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            state[f"model.layers.{i}.{name}.weight"].zero_()
    save_file(state, out / "model.safetensors")
    return out


def _direct_nll(model, ids, omitted):
    """Mean next-token NLL of a full HF forward with `omitted` blocks deleted."""
    import copy

    m = drop_layers(copy.deepcopy(model), omitted)
    logits = m(ids, use_cache=False).logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).item()


def test_shortgpt_finds_planted_identity_blocks(planted):
    from vllm_pudding.search.baselines import Blocks, calibration_ids, load_hf, shortgpt

    model, tok = load_hf(planted, torch.float32)
    ids = calibration_ids(tok, num_seqs=2, seq_len=32)
    assert ids.shape == (2, 32)
    with torch.no_grad():
        res = shortgpt(Blocks(model, ids), 2, log=None)
    assert res["layers"] == [2, 4]
    assert res["block_influence"][2] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_sleb_matches_direct_greedy(arch, planted, tiny_models):
    """SLEB's cached-prefix trials equal full forwards with the blocks deleted, and the
    greedy picks the argmin of those; block 0 and the last block are never removed.
    Gemma 3: 32 tokens span two of its 16-token windows (sliding layers' masks)."""
    from vllm_pudding.search.baselines import Blocks, calibration_ids, load_hf, sleb

    model, tok = load_hf(planted if arch == "llama" else tiny_models(arch).base,
                         torch.float32)
    ids = calibration_ids(tok, num_seqs=2, seq_len=32)
    with torch.no_grad():
        res = sleb(Blocks(model, ids), 2, log=None)
        removed = []
        for step in range(2):
            alive = [i for i in range(6) if i not in removed]
            direct = {i: _direct_nll(model, ids, set(removed) | {i}) for i in alive[1:-1]}
            trials = {int(k): v for k, v in res["trials"][step].items()}
            assert set(trials) == set(direct)
            for i in direct:
                assert trials[i] == pytest.approx(direct[i], abs=1e-4)
            removed.append(min(direct, key=lambda i: (direct[i], i)))
    assert res["order"] == removed and 0 not in removed and 5 not in removed
    assert res["dense_nll"] == pytest.approx(_direct_nll(model, ids, set()), abs=1e-4)


def test_label_job_resumes_and_merges_into_one_table(pudding_llm, tokenizer, tmp_path):
    """The paper-scale label job: chunks written as scored, a rerun scores only what is
    missing, and the merged table loads as router labels (every example under every set)."""
    from conftest import TINY_SETS
    from vllm_pudding.router.label_job import chunk_path, run
    from vllm_pudding.router.labels import load_tables

    caps = {"arc_easy": 5, "piqa": 3}
    meta = {"caps": caps, "seed": 0, "chunk": 2, "pool": TINY_SETS}
    logs = []
    counts = run(pudding_llm, tokenizer, len(TINY_SETS), caps, tmp_path, meta, chunk=2,
                 log=logs.append)
    assert counts == {"arc_easy": 5, "piqa": 3} and len(logs) == 5  # 3 + 2 chunks
    tables = load_tables([tmp_path / "labels.json.gz"], len(TINY_SETS))
    assert {t: len(tab.doc_ids) for t, tab in tables.items()} == counts
    first = (tmp_path / "labels.json.gz").read_bytes()
    chunk_path(tmp_path, "arc_easy", 1).unlink()
    logs.clear()
    run(pudding_llm, tokenizer, len(TINY_SETS), caps, tmp_path, meta, chunk=2, log=logs.append)
    assert len(logs) == 1 and logs[0].startswith("arc_easy chunk 1:")
    assert (tmp_path / "labels.json.gz").read_bytes() == first, "same scores, same table"
    stale = chunk_path(tmp_path, "piqa", 0)  # a chunk of another sample: refused
    stale.write_bytes(chunk_path(tmp_path, "arc_easy", 0).read_bytes())
    with pytest.raises(ValueError, match="other examples than this job plans"):
        run(pudding_llm, tokenizer, len(TINY_SETS), caps, tmp_path, meta, chunk=2)
    with pytest.raises(ValueError, match="another job's settings"):
        run(pudding_llm, tokenizer, len(TINY_SETS), caps, tmp_path, {**meta, "seed": 1},
            chunk=2, seed=1)


def test_label_job_strided_chunks_span_the_sample_and_tasks_alternate():
    """A job stopped early must leave every task an unbiased share: strided chunks cover
    the whole (file-ordered) sample, and chunks alternate between tasks."""
    from vllm_pudding.router.label_job import plan_chunks, task_chunks

    rows = list(range(10))
    assert task_chunks(rows, 4, strided=False) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    strided = task_chunks(rows, 4, strided=True)
    assert strided == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(sum(strided, [])) == rows and max(map(len, strided)) <= 4
    plan = [(t, i, len(c)) for t, i, c in plan_chunks({"arc_easy": 5, "piqa": 3}, 2, 0,
                                                     frozenset({"piqa"}))]
    assert plan == [("arc_easy", 0, 2), ("piqa", 0, 2), ("arc_easy", 1, 2), ("piqa", 1, 1),
                    ("arc_easy", 2, 1)]


def test_sanity_text_loss_is_token_weighted_with_a_paired_interval():
    import numpy as np

    from vllm_pudding.eval.sanity import text_loss

    nll, tokens = np.array([10.0, 30.0, 20.0]), np.array([10, 10, 20])
    dense = np.array([5.0, 10.0, 10.0])
    assert text_loss(nll, tokens).nll == pytest.approx(60 / 40)
    loss = text_loss(nll, tokens, dense)
    assert loss.excess == pytest.approx((60 - 25) / 40)
    assert loss.excess_low <= loss.excess <= loss.excess_high
    same = text_loss(dense, tokens, dense)
    assert same.excess == same.excess_low == same.excess_high == 0.0


def test_sanity_free_text_is_held_out_prose():
    from vllm_pudding.eval.sanity import free_text_examples

    exs = free_text_examples(5)
    assert len(exs) == 5 and len({e.continuations[0] for e in exs}) == 5
    assert all(e.contexts == [""] and len(e.continuations[0].split()) >= 20 for e in exs)
    assert [e.continuations for e in free_text_examples(5)] == [e.continuations for e in exs]


def test_sanity_prompts_fall_back_to_the_qa_form_without_a_chat_template(tiny_base):
    """A pretrained model with no chat template (Gemma-3-270M) gets the tasks' zero-shot
    form; one with a template gets the template (the run stopped with ValueError before)."""
    from transformers import AutoTokenizer

    from vllm_pudding.eval.sanity import instruction_prompts

    tok = AutoTokenizer.from_pretrained(tiny_base)
    tok.chat_template = None
    plain = instruction_prompts(tok, 3)
    assert len(set(plain)) == 3
    assert all(p.startswith("Question: ") and p.endswith("?\nAnswer:") for p in plain)
    tok.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}<a>"
    chat = instruction_prompts(tok, 3)
    questions = [p.removeprefix("Question: ").removesuffix("\nAnswer:") for p in plain]
    assert chat == [f"<u>{q}</u><a>" for q in questions]


# ---------------------------------------------------------------- stored scores (no engine)

def test_read_results_fills_choice_lengths_of_old_files(tmp_path):
    """Files scored before `num_chars` existed get it from the rebuilt examples, checked
    against what the file holds (doc id, gold, continuation bytes)."""
    import gzip

    from vllm_pudding.data.tasks import validation_examples
    from vllm_pudding.eval.stored import read_results

    arc = validation_examples("arc_challenge", n=1000, seed=0)[:2]
    wino = validation_examples("winogrande", n=1000, seed=0)[:1]

    def old(ex):  # a stored example as written before num_chars
        return {"task": ex.task, "doc_id": ex.doc_id, "gold": ex.gold, "set_id": 0,
                "logprobs": [-1.0] * ex.num_choices, "num_tokens": [1] * ex.num_choices,
                "num_bytes": [len(ex.pair(c)[1].encode()) for c in range(ex.num_choices)]}
    data = {"split": "validation", "n": 1000, "seed": 0,
            "examples": {"set0": {"arc_challenge": [old(e) for e in arc],
                                  "winogrande": [old(e) for e in wino]}}}
    path = tmp_path / "old.json.gz"
    path.write_bytes(gzip.compress(json.dumps(data).encode()))
    got = read_results(path)["examples"]["set0"]
    for ex, e in zip(arc + wino, got["arc_challenge"] + got["winogrande"]):
        assert e["num_chars"] == [len(ex.choice_text(c)) for c in range(ex.num_choices)]
    lens = [len(c) - 1 for c in arc[0].continuations]  # ARC: the continuation less its space
    assert got["arc_challenge"][0]["num_chars"] == lens
    # Equal sums: acc_norm picks the longest choice (the first of the longest).
    assert ScoredExample(**got["arc_challenge"][0]).pred_norm == lens.index(max(lens))
    bad = json.loads(json.dumps(data))
    bad["examples"]["set0"]["arc_challenge"][1]["num_bytes"][0] += 1
    path.write_bytes(gzip.compress(json.dumps(bad).encode()))
    with pytest.raises(ValueError, match="differs from the rebuilt example"):
        read_results(path)


def _run(label, task, right):
    """A RunResult whose i-th example of `task` is right iff right[i] (2 choices, gold 0)."""
    from vllm_pudding.eval.run import RunResult, task_result

    exs = [ScoredExample(task=task, doc_id=str(i), gold=0, set_id=None,
                         logprobs=[0.0, -1.0] if r else [-1.0, 0.0], num_tokens=[1, 1],
                         num_bytes=[2, 2], num_chars=[1, 1]) for i, r in enumerate(right)]
    return RunResult(label=label, layers=None, tasks={task: task_result(task, exs)},
                     examples={task: exs})


def test_paired_difference_and_task_router():
    """The paired interval comes from per-example differences (narrow where the runs agree);
    the task router takes each task's best set on train rows."""
    import numpy as np

    from vllm_pudding.eval.paired import paired_difference, task_router_run

    a = _run("a", "piqa", [1] * 60 + [0] * 40)
    b = _run("b", "piqa", [1] * 50 + [0] * 50)  # a is right on 10 more, never worse
    d, low, high = paired_difference(a, b, ["piqa"])
    assert d == pytest.approx(0.10) and 0.04 < low <= d <= high < 0.17
    same = paired_difference(a, a, ["piqa"])
    assert same == (0.0, 0.0, 0.0)
    runs = [_run("set0", "piqa", [0] * 100), _run("set1", "piqa", [1] * 70 + [0] * 30)]
    table = SimpleNamespace(correct=np.array([[False, True], [True, True], [False, False]]))
    row, best = task_router_run(runs, {"piqa": table})
    assert best == {"piqa": 1} and row.tasks["piqa"].value.value == pytest.approx(0.7)
    row, best = task_router_run(runs, {"piqa": table}, allowed=[0])  # set 1 not routable
    assert best == {"piqa": 0} and row.tasks["piqa"].value.value == 0.0
