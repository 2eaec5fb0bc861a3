"""Router pieces without an engine: planted routing, artifact validation, batching, labels."""

import asyncio
import json

import numpy as np
import pytest
import torch

from conftest import TINY_SETS
from router_utils import FILLER_HELD, planted_texts, train_planted_router


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return train_planted_router(tmp_path_factory.mktemp("router") / "planted", TINY_SETS)


@pytest.fixture
def routed_dir(planted, tiny_base, tmp_path):
    from vllm_pudding.artifact import build_pudding_dir
    from vllm_pudding.config import PuddingConfig
    from vllm_pudding.router.install import install_router

    d = build_pudding_dir(tiny_base, PuddingConfig(omission_sets=TINY_SETS), tmp_path / "pd")
    install_router(d, planted)
    return d


def test_planted_router_routes_unseen_prompts(routed_dir):
    from vllm_pudding.artifact import load_pudding_dir
    from vllm_pudding.router.runtime import load_router

    router = load_router(routed_dir, load_pudding_dir(routed_dir))
    texts, truth = planted_texts(6, seed=1, filler=FILLER_HELD)
    assert router.route(texts) == truth
    assert len(set(truth)) == 3  # the planted signal really asks for different sets
    assert router.stats.calls == 1 and router.stats.prompts == len(texts)


def test_routers_never_pick_a_set_outside_routable_sets(planted, tiny_base, tmp_path):
    """Sets outside `routable_sets` (broken free generation) stay pinnable, but no router
    sends a request there: the pick is the best-scored routable set."""
    from vllm_pudding.artifact import build_pudding_dir, load_pudding_dir
    from vllm_pudding.config import PuddingConfig
    from vllm_pudding.router.install import install_router
    from vllm_pudding.router.runtime import load_router

    d = build_pudding_dir(tiny_base, PuddingConfig(omission_sets=TINY_SETS,
                                                   routable_sets=[0, 2]), tmp_path / "pd")
    install_router(d, planted)
    pool = load_pudding_dir(d)
    assert pool.routable_sets == [0, 2] and pool.resolve_set_id(1) == 1
    router = load_router(d, pool)
    texts, truth = planted_texts(6, seed=1, filler=FILLER_HELD)
    scores = router.scores(texts)
    picked = router.route(texts)
    assert 1 in truth and 1 not in picked
    assert picked == [0 if s[0] >= s[2] else 2 for s in scores.tolist()]
    assert [p for p, t in zip(picked, truth) if t != 1] == [t for t in truth if t != 1]


def test_install_names_router_in_config(routed_dir):
    from vllm_pudding.artifact import load_pudding_dir

    pool = load_pudding_dir(routed_dir)
    assert pool.router.kind == "text" and (routed_dir / pool.router.path / "router.json").is_file()


@pytest.mark.parametrize("damage, message", [
    ("delete_spec", "router.json: router spec missing"),
    ("bad_json", "router.json: not valid JSON"),
    ("other_pool", "trained for another pool"),
    ("delete_head", "head.safetensors: router head weights missing"),
    ("unknown_field", "malformed router spec"),
])
def test_broken_router_is_a_clear_error(routed_dir, damage, message):
    from vllm_pudding.artifact import load_pudding_dir
    from vllm_pudding.router.runtime import load_router

    rdir = routed_dir / load_pudding_dir(routed_dir).router.path
    spec = json.loads((rdir / "router.json").read_text())
    if damage == "delete_spec":
        (rdir / "router.json").unlink()
    elif damage == "bad_json":
        (rdir / "router.json").write_text("{not json")
    elif damage == "other_pool":
        spec["omission_sets"] = spec["omission_sets"][:2]
        (rdir / "router.json").write_text(json.dumps(spec))
    elif damage == "delete_head":
        (rdir / "head.safetensors").unlink()
    elif damage == "unknown_field":
        spec["surprise"] = 1
        (rdir / "router.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=message):
        load_router(routed_dir, load_pudding_dir(routed_dir))


def test_head_mismatch_is_a_clear_error(routed_dir):
    from vllm_pudding.artifact import load_pudding_dir
    from vllm_pudding.router.runtime import load_router

    rdir = routed_dir / load_pudding_dir(routed_dir).router.path
    spec = json.loads((rdir / "router.json").read_text())
    spec["head_hidden"] = 7
    (rdir / "router.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="head.safetensors: does not match router.json"):
        load_router(routed_dir, load_pudding_dir(routed_dir))


def test_batcher_routes_concurrent_requests_in_one_call():
    from vllm_pudding.patches.auto_routing import RouteBatcher

    class Fake:
        calls = []

        def route(self, texts):
            self.calls.append(list(texts))
            return [len(t) for t in texts]

    async def run():
        b = RouteBatcher(Fake(), window_s=0.01)
        first = await asyncio.gather(*(b.route("x" * i) for i in range(1, 6)))
        second = await b.route("yy")
        return first, second

    first, second = asyncio.run(run())
    assert [s for s, _ in first] == [1, 2, 3, 4, 5] and second[0] == 2
    # every request of one router call reports that call's duration
    assert len({secs for _, secs in first}) == 1 and first[0][1] >= 0
    assert Fake.calls == [["x", "xx", "xxx", "xxxx", "xxxxx"], ["yy"]]


def test_batcher_failure_fails_each_waiting_request():
    from vllm_pudding.patches.auto_routing import RouteBatcher

    class Broken:
        def route(self, texts):
            raise ValueError("router exploded")

    async def run():
        b = RouteBatcher(Broken(), window_s=0.001)
        return await asyncio.gather(b.route("a"), b.route("b"), return_exceptions=True)

    assert all(isinstance(r, ValueError) for r in asyncio.run(run()))


def test_soft_and_mse_heads_learn_planted_labels():
    from vllm_pudding.router.head import fit_head

    g = torch.Generator().manual_seed(0)
    x = torch.randn(800, 4, generator=g)
    best = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # 3 classes from two features
    y = torch.full((800, 3), -1.0)
    y[torch.arange(800), best] = 0.0
    for objective in ("mse", "soft"):
        fit = fit_head(x[:600], y[:600], objective,
                       lambda h: float((np.array(h.route(x[600:])) == best[600:].numpy()).mean()),
                       hidden=32, epochs=200, lr=1e-2)
        assert fit.best_score > 0.85, (objective, fit.best_score)


def test_labels_targets_and_routed_accuracy(tmp_path):
    from vllm_pudding.router.labels import load_tables, routed_accuracy

    def ex(doc, gold, lps):
        return {"task": "arc_easy", "doc_id": doc, "gold": gold, "set_id": 0, "logprobs": lps,
                "num_tokens": [2] * len(lps), "num_bytes": [4] * len(lps),
                "num_chars": [3] * len(lps)}
    runs = {"set0": {"arc_easy": [ex("a", 0, [-1.0, -2.0]), ex("b", 1, [-1.0, -3.0])]},
            "set1": {"arc_easy": [ex("a", 0, [-3.0, -2.0]), ex("b", 1, [-4.0, -1.0])]}}
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({"examples": runs}))
    t = load_tables([path], 2)["arc_easy"]
    assert t.correct.tolist() == [[True, False], [False, True]]
    assert np.allclose(t.target("likelihood"), [[-0.5, -1.5], [-1.5, -0.5]])
    lse = np.log(np.exp(-1.0) + np.exp(-2.0))
    assert np.isclose(t.target("choice_logprob")[0, 0], -1.0 - lse)
    assert routed_accuracy(t, [0, 1]) == 1.0 and routed_accuracy(t, [1, 0]) == 0.0
    with pytest.raises(ValueError, match="no per-example scores"):
        load_tables([path], 3)


def test_labels_acc_norm_uses_choice_characters(tmp_path):
    """ARC-C reports acc_norm: the label scores divide by choice characters (lm-eval's
    definition, `eval.metrics.normalized_scores`), not by continuation bytes."""
    from vllm_pudding.router.labels import load_tables

    # chars [4, 1]: -4/4 = -1.0 beats -1.5/1; bytes with the space [5, 2]: -0.8 < -0.75.
    ex = {"task": "arc_challenge", "doc_id": "a", "gold": 0, "set_id": 0,
          "logprobs": [-4.0, -1.5], "num_tokens": [1, 1], "num_bytes": [5, 2],
          "num_chars": [4, 1]}
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({"examples": {"set0": {"arc_challenge": [ex]}}}))
    t = load_tables([path], 1)["arc_challenge"]
    assert t.scores[0, 0].tolist() == [-1.0, -1.5] and t.correct.tolist() == [[True]]


def test_winogrande_router_text_has_a_blank():
    from vllm_pudding.data.mc import MCExample
    from vllm_pudding.router.labels import router_text

    ex = MCExample(task="winogrande", doc_id="1", contexts=["The cat chased the dog",
                   "The cat chased the mouse"], continuations=[" because it was fast."], gold=0)
    assert router_text(ex) == "The cat chased the _ because it was fast."


def test_omission_admission_orders_by_shared_core_and_ages():
    from types import SimpleNamespace

    from vllm_pudding.patches.omission_admission import admission_order

    omitted = [frozenset(s) for s in ([1, 2, 3], [1, 2, 4], [5, 6, 7], [1, 5, 6])]

    def req(name, set_id, age=0.0):
        extra = None if set_id is None else {"pudding_set": set_id}
        return SimpleNamespace(name=name, request_id=name, arrival_time=100.0 - age,
                               sampling_params=SimpleNamespace(extra_args=extra))

    running = [req("r0", 0), req("r1", 1)]  # core {1, 2}
    waiting = [req("far", 2), req("near", 1), req("unknown", None), req("half", 3),
               req("same", 0)]
    names = [r.name for r in admission_order(waiting, running, omitted, 10.0, now=100.0)]
    assert names == ["near", "unknown", "same", "half", "far"]
    waiting[0] = req("far", 2, age=11.0)  # waited too long: first, whatever its set
    names = [r.name for r in admission_order(waiting, running, omitted, 10.0, now=100.0)]
    assert names[0] == "far"
    # aged requests among themselves: arrival order, never the cheaper set first (a
    # stream of cheap aged requests must not starve an expensive one)
    aged = [req("far", 2, age=12.0), req("half", 3, age=11.0), req("near", 1)]
    names = [r.name for r in admission_order(aged, running, omitted, 10.0, now=100.0)]
    assert names == ["far", "half", "near"]
    # nothing running: the oldest request's set anchors the batch
    names = [r.name for r in admission_order(waiting[1:], [], omitted, 10.0, now=100.0)]
    assert names == ["near", "unknown", "same", "half"]


def test_omission_admission_bypass_bound():
    """A request passed over by `max_bypass` later arrivals goes first, like an aged one;
    bypasses are counted from what each step admitted."""
    from types import SimpleNamespace

    from vllm_pudding.patches.omission_admission import admission_order, count_bypasses

    omitted = [frozenset(s) for s in ([1, 2, 3], [5, 6, 7])]

    def req(name, set_id, t):
        return SimpleNamespace(name=name, request_id=name, arrival_time=t,
                               sampling_params=SimpleNamespace(extra_args={"pudding_set": set_id}))

    running = [req("r", 0, 0.0)]
    far = req("far", 1, 1.0)  # keeps none of the running core's omitted layers: last
    cheap = [req(f"c{i}", 0, 2.0 + i) for i in range(5)]
    bypassed: dict[str, int] = {}
    waiting = [far] + cheap
    for step in range(2):  # two steps admit two later arrivals each
        order = admission_order(waiting, running, omitted, 1e9, now=10.0, max_bypass=3,
                                bypassed=bypassed)
        assert order[0].name == f"c{2 * step}"
        admitted = {r.request_id for r in order[:2]}
        count_bypasses(waiting, admitted, bypassed)
        waiting = [r for r in waiting if r.request_id not in admitted]
    assert bypassed == {"far": 4}
    order = admission_order(waiting, running, omitted, 1e9, now=10.0, max_bypass=3,
                            bypassed=bypassed)
    assert [r.name for r in order] == ["far", "c4"]
    # unbounded (the default): the expensive request stays last
    order = admission_order(waiting, running, omitted, 1e9, now=10.0, bypassed=bypassed)
    assert [r.name for r in order] == ["c4", "far"]
    # an older request admitted with later ones is no bypass of theirs; admitted leave
    count_bypasses(waiting, {"far"}, bypassed)
    assert bypassed == {}


@pytest.mark.parametrize("kind", ["text", "hidden"])
def test_feature_cache_key_of_training_equals_installed_routers(tmp_path, kind):
    """Router training and the tools that reload its router (validation report, serving
    pools) must name the same feature table, or they silently recompute it."""
    from vllm_pudding.router.features import feature_key, spec_feature_key
    from vllm_pudding.router.spec import RouterSpec

    prefix = 2 if kind == "hidden" else None
    pooling = "mean_last" if kind == "hidden" else "mean"
    spec = RouterSpec(kind=kind, omission_sets=[[1], [2]], feature_dim=8, head_hidden=4,
                      encoder="enc" if kind == "text" else None, prefix_layers=prefix,
                      pooling=pooling, target="choice_logprob", objective="mse")
    trained = feature_key(kind=kind, max_tokens=128, pooling=pooling, prefix_layers=prefix,
                          model_dir=tmp_path, split="train")
    assert spec_feature_key(spec, tmp_path, "train") == trained
    assert spec_feature_key(spec, tmp_path, "validation") != trained
    assert spec_feature_key(spec, tmp_path, "train", chat=True) != trained


def test_held_out_rows_are_whole_source_groups():
    """Held-out rows share no source with training rows: WinoGrande twins, HellaSwag
    activities, BoolQ articles stay on one side of the split."""
    from vllm_pudding.data.tasks import train_examples
    from vllm_pudding.router.groups import source_group, split_by_group

    wino = train_examples("winogrande", n=4)
    assert source_group(wino[0]) == source_group(wino[1]) == "dennis|ian"  # a twin pair
    hs = train_examples("hellaswag", n=1)[0]
    assert source_group(hs) == hs.contexts[0].split(": ")[0]
    assert source_group(train_examples("boolq", n=1)[0]) == "Persian language"
    for task in ("hellaswag", "winogrande", "boolq"):
        groups = [source_group(e) for e in train_examples(task, n=200)]
        train, held = split_by_group(groups, 0.2)
        assert sorted(np.concatenate([train, held]).tolist()) == list(range(200))
        assert len(held) >= 40 and len(held) < 200
        assert not {groups[i] for i in train} & {groups[i] for i in held}, task
        assert split_by_group(groups, 0.2)[1].tolist() == held.tolist()  # deterministic


def test_shrunk_labels_centre_rows_and_pull_to_task_mean():
    import numpy as np

    from vllm_pudding.router.train import shrunk

    y = np.array([[1.0, 3.0], [-2.0, 4.0]])  # row means 2 and 1
    assert np.allclose(shrunk(y, 0.0), [[-1, 1], [-3, 3]])
    assert np.allclose(shrunk(y, 1.0), [[-2, 2], [-2, 2]])  # every row = the task's mean
    assert np.allclose(shrunk(y, 0.5), [[-1.5, 1.5], [-2.5, 2.5]])
    with pytest.raises(ValueError, match="shrink"):
        shrunk(y, 1.5)


def test_variant_selection_routes_only_routable_sets():
    """Held-out scoring restricts choices to routable sets, as the engine does: a head
    whose top label is an unroutable set must be scored on its best routable one."""
    import numpy as np
    import torch

    from vllm_pudding.router.labels import TaskTable
    from vllm_pudding.router.train import Rows, fit_variants

    n = 40
    rng = np.random.default_rng(0)
    gold = np.zeros(n, dtype=int)
    scores = np.zeros((n, 3, 2))
    scores[:, :, 1] = 1.0  # every set wrong ...
    scores[:, 1, 0] = 2.0  # ... but set 1
    mean_lp = np.tile([-1.0, 0.5, 1.0], (n, 1))  # set 2: best label; set 1: right
    table = TaskTable("piqa", [str(i) for i in range(n)], gold, scores, mean_lp)
    tables = {"piqa": table}
    feats = {"piqa": torch.tensor(rng.normal(size=(n, 4)), dtype=torch.float32)}
    split = {"piqa": (np.arange(30), np.arange(30, n))}
    train, held = Rows(tables, feats, split, 0), Rows(tables, feats, split, 1)
    grid = [("likelihood", "mse", 0.0)]
    free = fit_variants("text", train, held, 8, 100, grid=grid)[0]
    kept = fit_variants("text", train, held, 8, 100, grid=grid, routable=[0, 1])[0]
    assert free["set_histogram"][2] > 0  # unrestricted, the head follows its labels
    assert kept["held_avg"] == 1.0 and kept["set_histogram"] == [0, 10, 0]
