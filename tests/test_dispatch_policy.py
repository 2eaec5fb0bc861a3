"""The set-affine dispatch policy without an engine: groups, least-loaded choice, bounded
spills, regrouping when set frequencies drift."""

import pytest

from vllm_pudding.dispatch.policy import (DispatchOptions, SetAffineDispatcher,
                                          assign_groups, group_plan)

# Sets 0 and 1 keep layers 0-5, sets 2 and 3 keep layers 2-7: grouping {0,1} and {2,3}
# keeps 6 of 8 layers per replica, any other split keeps all 8 somewhere.
PAIRS = [frozenset(range(6)), frozenset(range(6)), frozenset(range(2, 8)),
         frozenset(range(2, 8))]
# Four sets with distinct kept layers, none shared by two.
DISTINCT = [frozenset(range(8)) - {i} for i in range(4)]
# Four sets each keeping 4 of 8 layers, neighbours sharing 2: merging any two costs 2 more.
SPREAD = [frozenset((2 * i + j) % 8 for j in range(4)) for i in range(4)]


def test_groups_follow_shared_layers():
    assert assign_groups(PAIRS, [1, 1, 1, 1], 2) == [frozenset({0, 1}), frozenset({2, 3})]


def test_one_replica_serves_every_set():
    assert assign_groups(PAIRS, [1, 2, 3, 4], 1) == [frozenset(range(4))]


def test_every_set_served_and_replicas_follow_traffic():
    # Set 0 has 70% of the traffic: it gets most of the 10 replicas, every set keeps one.
    freqs = [0.7, 0.1, 0.1, 0.1]
    replica_sets = assign_groups(DISTINCT, freqs, 10)
    assert len(replica_sets) == 10
    assert set().union(*replica_sets) == {0, 1, 2, 3}
    serving = [sum(s in sets for sets in replica_sets) for s in range(4)]
    assert serving[0] >= 6 and all(1 <= n <= 2 for n in serving[1:]), replica_sets


def test_more_sets_than_replicas_minimises_union():
    plan = group_plan(PAIRS, [1, 1, 1, 1], 2)
    assert plan.replicas == (1, 1) and plan.bottleneck == pytest.approx(0.5 * 6)


def test_unused_set_does_not_take_a_replica():
    # Set 3 sees no traffic: it joins a group and the 3 replicas go to the used sets.
    replica_sets = assign_groups(DISTINCT, [1, 1, 1, 0], 3)
    assert sorted(len(s) for s in replica_sets) == [1, 1, 2]
    assert set().union(*replica_sets) == {0, 1, 2, 3}


@pytest.mark.parametrize("args, match", [
    (([], [], 1), "empty"),
    ((PAIRS, [1, 1], 2), "3|2 entries|4 sets"),
    ((PAIRS, [1, 1, 1, 1], 0), "num_replicas"),
    ((PAIRS, [1, -1, 1, 1], 2), "finite and >= 0"),
])
def test_bad_inputs_raise_value_error(args, match):
    with pytest.raises(ValueError, match=match):
        assign_groups(*args)


def _pairs_dispatcher(replicas=4, **options):
    return SetAffineDispatcher(PAIRS, replicas, DispatchOptions(**options))


def test_least_loaded_within_group():
    d = _pairs_dispatcher()
    assert d.replica_sets == [frozenset({0, 1})] * 2 + [frozenset({2, 3})] * 2
    assert d.choose(0, [3, 1, 0, 0]) == 1
    assert d.choose(2, [0, 0, 5, 2]) == 3
    # Equal loads: the replica that got fewer requests so far.
    assert d.choose(1, [2, 2, 0, 0]) == 0
    assert d.counters()[1]["served"] == {0: 1} and d.spills == [0, 0, 0, 0]


def test_spills_only_when_group_queues_and_another_is_idle():
    d = _pairs_dispatcher(queueing_load=4, idle_load=0, max_spill_fraction=1.0)
    assert d.choose(0, [3, 4, 0, 0]) == 0  # group not queueing: no spill
    assert d.choose(0, [4, 4, 1, 2]) in (0, 1)  # nobody idle: stays in the group
    assert d.choose(0, [4, 5, 1, 0]) == 3  # group queueing, replica 3 idle
    assert d.spills == [0, 0, 0, 1]
    assert d.counters()[3] == {"replica": 3, "sets": [2, 3], "served": {0: 1}, "spills": 1}


def test_spills_bounded_by_window_fraction():
    d = _pairs_dispatcher(queueing_load=1, max_spill_fraction=0.25, spill_window=8)
    picks = [d.choose(0, [9, 9, 0, 0]) for _ in range(16)]
    spilled = [p >= 2 for p in picks]
    assert sum(spilled[:8]) == 2 and sum(spilled) == 4  # 2 per 8 consecutive dispatches
    assert all(sum(spilled[i:i + 8]) <= 2 for i in range(9))
    assert sum(d.spills) == 4


def test_spilling_disabled():
    d = _pairs_dispatcher(queueing_load=1, max_spill_fraction=0.0)
    assert all(d.choose(2, [0, 0, 7, 7]) in (2, 3) for _ in range(20))
    assert d.spills == [0, 0, 0, 0]


def test_regroups_on_drift_and_keeps_counters():
    # Uniform prior over SPREAD on 4 replicas: one set each. Then only set 0 arrives.
    d = SetAffineDispatcher(SPREAD, 4, DispatchOptions(regroup_every=8, freq_half_life=16))
    assert sorted(len(s) for s in d.replica_sets) == [1, 1, 1, 1]
    before = d.choose(0, [0, 0, 0, 0])
    regrouped = [d.observe(0) for _ in range(64)]
    assert any(regrouped) and d.regroups >= 1 and d.freqs[0] > 0.9
    assert len(d.group_of(0)) >= 2  # the hot set now has several replicas
    assert set().union(*d.replica_sets) == {0, 1, 2, 3}  # the rare sets are still served
    assert d.served[before][0] == 1  # earlier dispatches stay counted where they went
    # Stable frequencies: no further regroup.
    count = d.regroups
    for _ in range(64):
        d.observe(0)
    assert d.regroups == count


def test_regroup_keeps_replicas_in_place_when_possible():
    d = SetAffineDispatcher(SPREAD, 4, DispatchOptions(regroup_every=8, freq_half_life=16))
    for _ in range(64):
        d.observe(0)
    # Set 0 takes 3 replicas, sets 1-3 share one; replica 0 still serves set 0 and the
    # shared replica is one that served one of sets 1-3 before.
    assert d.replica_sets[0] == {0} and sorted(map(sorted, d.replica_sets)) == [
        [0], [0], [0], [1, 2, 3]]


@pytest.mark.parametrize("options, match", [
    ({"queueing_load": 1, "idle_load": 1}, "must exceed idle_load"),
    ({"max_spill_fraction": 1.5}, "max_spill_fraction"),
    ({"initial_freqs": [0, 0, 0, 0]}, "initial_freqs"),
    ({"spil_window": 3}, "spil_window"),
])
def test_bad_options_raise_value_error(options, match):
    with pytest.raises(ValueError, match=match):
        DispatchOptions(**options)


def test_bad_requests_raise_value_error():
    d = _pairs_dispatcher()
    with pytest.raises(ValueError, match="not in the pool"):
        d.choose(4, [0, 0, 0, 0])
    with pytest.raises(ValueError, match="4 replicas"):
        d.choose(0, [0, 0])
    with pytest.raises(ValueError, match="5 entries"):
        SetAffineDispatcher(PAIRS, 2, DispatchOptions(initial_freqs=[1] * 5))


def test_partial_layer_cost_prefers_sets_sharing_kept_layers():
    # Sets 0 and 1 keep the same layers; set 2 keeps a subset of set 0's. Unions alone
    # tie ({0,1} | {2} and {0,2} | {1} both keep 6 + 4 layers); partial layers (kept by
    # some of a group's sets only) break the tie towards the group that shares all.
    pool = [frozenset(range(6)), frozenset(range(6)), frozenset(range(4)), frozenset(range(4))]
    plan = group_plan(pool, [1, 1, 1, 1], 2, partial_layer_cost=1.0)
    assert set(plan.groups) == {frozenset({0, 1}), frozenset({2, 3})}
    with pytest.raises(ValueError, match="partial_layer_cost"):
        group_plan(pool, [1, 1, 1, 1], 2, partial_layer_cost=-1.0)


def test_composition_prediction_and_simulator():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from dispatch_model import StepCost, composition_prediction, simulate

    # Issue 12's one-engine figures: 0.880 / 0.821 and 1 / 0.922.
    assert composition_prediction(10, 2)["affine_over_blind"] == pytest.approx(1.0719, abs=1e-3)
    assert composition_prediction(2, 2)["affine_over_blind"] == pytest.approx(1.0846, abs=1e-3)
    assert composition_prediction(10, 16)["affine_over_blind"] == pytest.approx(1 / 0.821)
    # Two sets with disjoint kept layers, one per replica when affine: each batch keeps 4
    # layers instead of 8, so with a step of c per layer only, throughput doubles.
    pool = [frozenset(range(4)), frozenset(range(4, 8))]
    cost = StepCost(a=0.0, b=0.0, c=1.0)
    sets = [0, 0, 1, 1] * 4  # arrival order a round-robin balancer splits set-blind
    blind = simulate(pool, sets, 2, cost, affine=False, prompt=0, out=4)
    affine = simulate(pool, sets, 2, cost, affine=True, prompt=0, out=4)
    assert affine["replica_sets"] == [[0], [1]] and blind["replica_sets"] == [[0, 1], [0, 1]]
    assert affine["tokens_per_s"] == pytest.approx(2 * blind["tokens_per_s"])
